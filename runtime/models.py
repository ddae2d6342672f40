"""Load the model components a plan names, by source and family, through diffusers/transformers."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import torch
import diffusers
import transformers
from diffusers import AutoencoderKL

from dbspec.families import family_spec
from dbspec.plan.model import ModelPlan, Plan
from dbspec.runtime import tiny
from dbspec.runtime.component_files import (
    ComponentFileError,
    load_denoiser_file,
    load_text_encoder_file,
    load_vae_file,
)
from dbspec.runtime.families import family_runtime
from dbspec.runtime.weight_files import state_tensors
from dbspec.runtime.dtypes import to_dtype  # noqa: F401 - re-exported


class ModelLoadError(Exception):
    """The base model cannot be loaded; the message says what to do."""


@attrs.define
class Components:
    unet: torch.nn.Module  # the family's denoiser
    vae: AutoencoderKL
    text_encoders: list  # SDXL: [CLIPTextModel, CLIPTextModelWithProjection]
    tokenizers: list
    noise_scheduler: object  # the family objective's training scheduler
    scheduler_config: dict  # the base model's own sampling scheduler config (for validation)


def load_components(plan: Plan) -> Components:
    m = plan.model
    single = m.source == "single_file" or m.source == "ckpt"
    try:
        if single:
            parts = _from_single_file(m, plan.cache.dir)
        else:
            parts = _from_folder(_folder_for(m), m)
        if single:
            _files_over_single_file(m, parts)
    except ComponentFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(_load_hint(m, exc)) from exc
    if m.vae:
        try:
            parts["vae"] = _load_vae(m, None if single else _folder_for(m))
        except ComponentFileError as exc:
            raise ModelLoadError(str(exc)) from exc
    noise = family_runtime(m.family).objective.noise_scheduler(
        parts["scheduler"].config,
        prediction=m.prediction,
        zero_terminal_snr=plan.loss.zero_terminal_snr,
        flow=plan.loss.flow,
    )
    return Components(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoders=parts["text_encoders"],
        tokenizers=parts["tokenizers"],
        noise_scheduler=noise,
        scheduler_config=dict(parts["scheduler"].config),
    )


def _folder_for(m: ModelPlan) -> str:
    if m.source == "builtin":
        return str(tiny.materialize(m.base, Path(m.path)))
    if m.source == "hub" and not m.resolved:
        return m.base  # from_pretrained downloads (or finds it in the cache) unless HF_HUB_OFFLINE is set
    return m.path


def _from_folder(root: str, m: ModelPlan) -> dict:
    kw = {"revision": m.revision} if m.source == "hub" and m.revision else {}
    if m.variant:
        kw["variant"] = m.variant
    spec = family_spec(m.family)
    files = _text_files(m)
    text_encoders = [
        getattr(transformers, e.model_class).from_pretrained(root, subfolder=e.component, **kw)
        if not file
        else load_text_encoder_file(
            file,
            e,
            getattr(transformers, e.model_class).config_class.from_pretrained(
                root, subfolder=e.component, **_no_variant(kw)
            ),
            f"model.text_encoder_files[{i}]",
        )
        for i, (e, file) in enumerate(zip(spec.text_encoders, files))
    ]
    tokenizers = [
        getattr(transformers, e.tokenizer_class).from_pretrained(
            root, subfolder=e.tokenizer, **_no_variant(kw)
        )
        for e in spec.text_encoders
    ]
    if m.denoiser_file:
        denoiser = load_denoiser_file(m.denoiser_file, spec, root, kw.get("revision", ""))
    else:
        denoiser = getattr(diffusers, spec.denoiser_class).from_pretrained(
            root, subfolder=spec.denoiser, **kw
        )
    scheduler = getattr(diffusers, spec.noise_scheduler)
    return {
        "unet": denoiser,
        "vae": None if m.vae else AutoencoderKL.from_pretrained(root, subfolder="vae", **kw),
        "text_encoders": text_encoders,
        "tokenizers": tokenizers,
        "scheduler": scheduler.from_pretrained(root, subfolder="scheduler", **_no_variant(kw)),
    }


def _text_files(m: ModelPlan) -> list[str]:
    """One entry per text encoder of the family: its file, or "" for the base model's."""
    n = len(family_spec(m.family).text_encoders)
    return [*m.text_encoder_files, *[""] * (n - len(m.text_encoder_files))][:n]


def _files_over_single_file(m: ModelPlan, parts: dict) -> None:
    """Component files over a single-file base: the denoiser configured by model.config (or as diffusers
    infers it), the text encoders by the checkpoint's own encoders' configs."""
    spec = family_spec(m.family)
    if m.denoiser_file:
        parts["unet"] = load_denoiser_file(m.denoiser_file, spec, m.config or None)
    for i, (e, file) in enumerate(zip(spec.text_encoders, _text_files(m))):
        if file:
            config = parts["text_encoders"][i].config
            parts["text_encoders"][i] = load_text_encoder_file(
                file, e, config, f"model.text_encoder_files[{i}]"
            )


def _no_variant(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "variant"}


def _from_single_file(m: ModelPlan, cache_dir: str) -> dict:
    spec = family_spec(m.family)
    pipeline_cls = family_runtime(m.family).pipeline_class()
    kwargs = {"config": m.config} if m.config else {}
    path = m.path if m.source == "single_file" else _ckpt_as_safetensors(m, Path(cache_dir))
    pipe = pipeline_cls.from_single_file(path, **kwargs)
    encoders = [getattr(pipe, name) for name in spec.text_encoder_names]
    tokenizers = [getattr(pipe, name) for name in spec.tokenizer_names]
    return {
        "unet": getattr(pipe, spec.denoiser),
        "vae": pipe.vae,
        "text_encoders": encoders,
        "tokenizers": tokenizers,
        "scheduler": pipe.scheduler,
    }


def _ckpt_as_safetensors(m: ModelPlan, cache_dir: Path) -> str:
    """A .ckpt's tensors as a .safetensors file in the cache (keyed by the checkpoint's identity).

    torch.load(weights_only=True) unless the spec allowed pickle: a file needing more
    fails with a clear error.
    """
    import pickle

    from safetensors.torch import save_file

    base_identity = m.identity.split("+")[0]  # component files (model.denoiser_file) add "+..." parts
    target = cache_dir / "models" / f"ckpt-{base_identity.split(':')[-1][:32]}.safetensors"
    if target.exists():
        return str(target)
    try:
        obj = torch.load(m.path, map_location="cpu", weights_only=not m.allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"`{m.base}` holds more than tensors, and loading it would unpickle arbitrary objects: "
            f"convert it to .safetensors, or set model.allow_pickle = true if you trust it ({exc})"
        ) from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"`{m.base}` holds a {type(obj).__name__}, not a checkpoint's state dict")
    tensors = {k: v.contiguous() for k, v in state_tensors(obj).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    save_file(tensors, str(staging))
    os.replace(staging, target)
    return str(target)


def _load_vae(m: ModelPlan, config: str | None = None) -> AutoencoderKL:
    """model.vae: a file configured by the base model's vae (`config`: its folder or hub id; a single-file
    base: model.config, or what diffusers infers), a folder or a hub id."""
    path = Path(m.vae)
    if path.is_file():
        config = config or m.config or None
        return load_vae_file(str(path), config, m.revision if config == m.base else "")
    if path.is_dir() and (path / "vae").is_dir():
        return AutoencoderKL.from_pretrained(str(path), subfolder="vae")
    return AutoencoderKL.from_pretrained(m.vae)


def _load_hint(m: ModelPlan, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if m.source == "hub" and not m.resolved:
        how = "unset HF_HUB_OFFLINE to download it, or " if offline else ""
        return (
            f"cannot load `{m.base}`: it is not in the local Hugging Face cache ({exc}); {how}"
            f"run `huggingface-cli download {m.base}` first"
        )
    return f"cannot load the base model `{m.base}` from {m.path or m.base}: {exc}"


def set_attention(unet: torch.nn.Module, kind: str, family: str) -> None:
    """SDPA is diffusers' default on torch 2; "eager" selects the family's plain attention (its registry's
    processor class or attention-dispatch backend; the compiler refuses "eager" for a family with neither)."""
    if kind != "eager":
        return
    spec = family_spec(family)
    if spec.eager_attention_backend:
        unet.set_attention_backend(spec.eager_attention_backend)
    elif spec.eager_attention_processor:
        from diffusers.models import attention_processor

        unet.set_attn_processor(getattr(attention_processor, spec.eager_attention_processor)())
    else:
        raise ValueError(f"{spec.title} has no eager attention (DBS547)")


def pipeline_for(plan: Plan, comps: Components):
    """A diffusers pipeline over the live (training) components, for validation and class images (both set
    the sampling scheduler their plan names; DDPM is only the placeholder)."""
    spec = family_spec(plan.model.family)
    cls = family_runtime(plan.model.family).pipeline_class()
    scheduler = getattr(diffusers, spec.noise_scheduler).from_config(comps.scheduler_config)
    kwargs = {
        spec.denoiser: comps.unet,
        "vae": comps.vae,
        "scheduler": scheduler,
        **dict(zip(spec.text_encoder_names, comps.text_encoders)),
        **dict(zip(spec.tokenizer_names, comps.tokenizers)),
        **dict.fromkeys(spec.absent_components),  # the refiner has no first text encoder
    }
    if spec.aesthetic_score:
        kwargs["requires_aesthetics_score"] = True
    if spec.watermarker:  # SDXL's pipeline: an optional watermarker instead
        return cls(**kwargs, add_watermarker=False)
    if not spec.safety_checker:
        return cls(**kwargs)
    return cls(**kwargs, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def trained_text_encoders(plan: Plan, comps: Components) -> dict[str, torch.nn.Module]:
    """The text encoders the plan trains, by name: each one's ComponentPlan decides (SDXL's second text
    encoder stays frozen with train.text_encoder_2 = false while the first trains)."""
    names = family_spec(plan.model.family).text_encoder_names
    trains = {c.name for c in plan.precision.components if c.trainable != "frozen"}
    return {n: enc for n, enc in zip(names, comps.text_encoders) if n in trains}
