"""`dbspec convert simpletuner`: SimpleTuner config.json (or .toml) + multidatabackend.json, SD 1.x/2.x/SDXL,
SD3.5 and Flux.1.

config.json keys are SimpleTuner's command-line options (a leading `--` is optional) and go through its
argparse, so "1e-4" and 1e-4 mean the same. Defaults not stated in the config are SimpleTuner's field-registry
defaults (snapshot 2026-08); they change between SimpleTuner versions, so the report lists each as defaulted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import tomli

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.launcher import InputError
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.simpletuner.data import map_backends
from dbspec.convert.simpletuner.train import map_training

DEFAULTS: dict[str, Any] = {
    "model_type": "lora",
    "model_family": None,
    "lora_type": "standard",
    "lora_rank": 16,
    "lora_alpha": None,
    "lora_dropout": 0.1,
    "learning_rate": 4e-7,
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 0,
    "lr_num_cycles": 1,
    "lr_end": 4e-7,  # polynomial's end LR; the floor of cosine
    "lr_power": 0.8,  # polynomial's power
    "num_train_epochs": 1,
    "max_train_steps": None,
    "train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "optimizer": "adamw_bf16",
    "max_grad_norm": 2.0,
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "train_text_encoder": False,
    "text_encoder_lr": None,
    "seed": None,
    "resolution": 1024,
    "resolution_type": "pixel_area",
    "checkpointing_steps": None,  # the legacy name of checkpoint_step_interval
    "checkpoint_step_interval": 500,
    "checkpoints_total_limit": 5,
    "snr_gamma": None,
    "offset_noise": False,  # noise_offset applies only when this is true
    "noise_offset": 0.1,
    "noise_offset_probability": 0.25,
    "rescale_betas_zero_snr": False,  # sd2x forces it on
    "model_flavour": None,
    "lycoris_config": "config/lycoris_config.json",
    "loss_type": "l2",
    "huber_schedule": "snr",
    "huber_c": 0.1,
    "minimum_image_size": None,
    "prediction_type": None,
    "base_model_precision": "no_change",
    "use_ema": False,
    "ema_decay": 0.995,
    "validation_prompt": None,
    "validation_steps": None,  # the legacy name of validation_step_interval
    "validation_step_interval": 100,
    "validation_num_inference_steps": 30,
    "validation_guidance": None,
    "validation_negative_prompt": None,
    "validation_seed": None,
    "validation_noise_scheduler": None,
    "pretrained_model_name_or_path": None,
    "pretrained_vae_model_name_or_path": None,
    "revision": None,
    "output_dir": "output",
    "report_to": None,
    "optimizer_beta1": None,
    "optimizer_beta2": None,
    "optimizer_config": None,
    # two field-registry entries (data: None, advanced: 0.1); advanced registers last and wins
    "caption_dropout_probability": 0.1,
}


@attrs.frozen(kw_only=True)
class SimpleTunerRequest:
    config: Path
    backend: Path | None = None
    cwd: Path


def convert_simpletuner(req: SimpleTunerRequest, out: Path, allow_unsupported: bool = False):
    conv = Conversion(tool="SimpleTuner", allow_unsupported=allow_unsupported)
    paths = PathMapper(cwd=req.cwd.resolve(), out_dir=out.resolve().parent)
    raw = _load(req.cwd / req.config if not req.config.is_absolute() else req.config)
    if not isinstance(raw, dict):
        raise InputError(f"`{req.config}` must hold an object of options")
    cfg = {name: Legacy(key=name, value=value, source="default") for name, value in DEFAULTS.items()}
    for key, value in raw.items():
        name = key.removeprefix("--")
        if value is None:  # SimpleTuner passes no flag for null: its default applies
            continue
        if _number_ok(name, value, conv):
            cfg[name] = Legacy(key=name, value=value, source="config.json")
    backend_path = _backend_path(req, cfg, paths)
    backends = _load(backend_path)
    if not isinstance(backends, list):
        raise InputError(f"`{backend_path}` must hold a list of backends")
    lora = cfg["model_type"].value == "lora"
    if "data_backend_config" in cfg:
        conv.record(cfg["data_backend_config"], "mapped", "datasets")
    data = map_backends(backends, cfg, lora, paths, conv)
    map_training(cfg, data, lora, paths, conv)
    return conv, [
        f"Converted by `dbspec convert simpletuner` from: {req.config} and {backend_path}.",
        "Each value's comment names the SimpleTuner option it came from; `--report` lists every option.",
    ]


_NUMBERS = {
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "lr_warmup_steps",
    "lr_num_cycles",
    "num_train_epochs",
    "max_train_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "text_encoder_lr",
    "seed",
    "resolution",
    "checkpointing_steps",
    "checkpoint_step_interval",
    "checkpoints_total_limit",
    "snr_gamma",
    "noise_offset",
    "noise_offset_probability",
    "ema_decay",
    "validation_steps",
    "validation_num_inference_steps",
    "validation_guidance",
    "validation_seed",
    "optimizer_beta1",
    "optimizer_beta2",
    "caption_dropout_probability",
    "validation_step_interval",
    "lr_end",
    "lr_power",
    "huber_c",
    "minimum_image_size",
    # the flow families' (dbspec/convert/simpletuner/flow.py)
    "tokenizer_max_length",
    "flow_sigmoid_scale",
    "flow_schedule_shift",
    "flow_beta_schedule_alpha",
    "flow_beta_schedule_beta",
    "flux_guidance_value",
    "flux_guidance_min",
    "flux_guidance_max",
}


def _number_ok(name: str, value: Any, conv: Conversion) -> bool:
    """SimpleTuner's argparse turns "1e-4" into a number and rejects what is none."""
    if name not in _NUMBERS or value is None:
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        conv.invalid(name, value, "config.json", "not a number (SimpleTuner's argparse rejects it)")
        return False
    if number != number or number in (float("inf"), float("-inf")) or isinstance(value, bool):
        conv.invalid(name, value, "config.json", "not a finite number")
        return False
    return True


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return tomli.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read `{path}`: {exc}") from None


def _backend_path(req: SimpleTunerRequest, cfg: dict[str, Legacy], paths: PathMapper) -> Path:
    if req.backend is not None:
        return req.backend if req.backend.is_absolute() else req.cwd / req.backend
    if "data_backend_config" in cfg:
        local = paths.local(str(cfg["data_backend_config"].value))
        if local is not None:
            return local
    raise InputError(
        "no dataloader config: pass --backend multidatabackend.json (config.json has no data_backend_config)"
    )
