"""Which weights a run trains, how they are saved as outputs, and restored on resume."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from dbspec.families import ALL_TEXT_ENCODERS, family_spec
from dbspec.plan.io import plan_to_json
from dbspec.plan.model import Plan
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime import faults
from dbspec.runtime.adapters import is_adapter_weight
from dbspec.runtime.exports import exports_for_plan
from dbspec.runtime.models import Components
from dbspec.runtime.outdir import replace_folder
from dbspec.util.atomic import write_text_atomic


def _trained_modules(comps: Components, plan: Plan) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {}
    if plan.train_denoiser:
        modules["unet"] = comps.unet
    if plan.train_text_encoder:
        modules.update(zip(family_spec(plan.model.family).text_encoder_names, comps.text_encoders))
    return modules


def _selected(name: str, plan: Plan) -> bool:
    return plan.adapter.kind == "none" or is_adapter_weight(name)


def trainable_state(comps: Components, plan: Plan) -> dict[str, torch.Tensor]:
    """Every weight the run trains (also after the text encoder stopped), at full precision, for resume."""
    return {
        f"{prefix}.{name}": p.detach().to("cpu", copy=True)
        for prefix, module in _trained_modules(comps, plan).items()
        for name, p in module.named_parameters()
        if _selected(name, plan)
    }


def restore_trainable(comps: Components, state: dict[str, torch.Tensor]) -> None:
    modules = {"unet": comps.unet, **dict(zip(ALL_TEXT_ENCODERS, comps.text_encoders))}
    params = {f"{prefix}.{name}": p for prefix, m in modules.items() for name, p in m.named_parameters()}
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(
            f"checkpoint holds weights this run does not have (e.g. {missing[0]}): was it made by "
            "another plan?"
        )
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value.to(params[key].device, params[key].dtype))


def save_weights(folder: Path, comps: Components, plan: Plan, ema=None) -> None:
    """LoRA runs: diffusers LoRA safetensors. Full runs: the trained components as diffusers folders.
    The plan that produced them is written beside them, and the EMA weights in `ema/` when enabled."""
    folder = Path(folder)
    if ema is not None:
        with ema.swap():
            _save_trained(folder / "ema", comps, plan)
    _save_trained(folder, comps, plan)


def _save_trained(folder: Path, comps: Components, plan: Plan) -> None:
    write_text_atomic(folder / "plan.json", plan_to_json(plan))
    dtype = plan.checkpoints.save_precision
    trained = _trained_modules(comps, plan)
    if plan.adapter.kind == "lora":
        encoders = (
            dict(zip(family_spec(plan.model.family).text_encoder_names, comps.text_encoders))
            if plan.train_text_encoder
            else {}
        )
        ckpt.save_lora_weights(
            folder,
            trained.get("unet"),
            encoders.get("text_encoder"),
            dtype,
            family=plan.model.family,
            text_encoder_2=encoders.get("text_encoder_2"),
        )
        return
    if plan.adapter.kind != "none":  # LoHa, LoKr
        ckpt.save_peft_adapters(folder, trained, dtype)
        return
    text = {name: m for name, m in trained.items() if name != "unet"}
    ckpt.save_full_weights(folder, trained.get("unet"), text, dtype)


def save_pipeline(folder: Path, pipeline, comps: Components, plan: Plan, ema=None) -> None:
    """A complete diffusers folder (full runs): the pipeline, with the trained parts cast to save_precision."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    save_weights(folder, comps, plan, ema)


def write_final(final: Path, pipeline, comps: Components, plan: Plan, ema=None) -> None:
    """The run's result and its exports, written beside and then renamed into place (a crash never leaves
    half a `final`, and an earlier `final` is deleted only once the new one is in place). With EMA, the
    exports hold the EMA weights (what validation showed)."""
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if plan.adapter.kind == "none":
            save_pipeline(staging, pipeline, comps, plan, ema)
        else:
            save_weights(staging, comps, plan, ema)
        with ema.swap() if ema is not None else contextlib.nullcontext():
            exports_for_plan(plan, staging, comps)
        faults.reached("final.staged")
        replace_folder(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if ckpt.is_write_failure(exc):
            raise ckpt.OutputError(ckpt.write_failure("the final weights", final.parent, exc)) from exc
        raise
