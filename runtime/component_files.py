"""Load components from their own weight files (model.denoiser_file, model.text_encoder_files, a model.vae
file), each built from the base model's config: kohya's `--pretrained_model_name_or_path` (a Flux or SD3
transformer alone), `--clip_l`, `--clip_g`, `--t5xxl`, `--ae`.

The denoiser and the autoencoder load through diffusers' `from_single_file` (which converts the original
layouts: Black Forest Labs' Flux, Stability's MMDiT and LDM autoencoders); a text encoder is the transformers
model of the base's config with the file's tensors, found by dbspec.weightfiles (the plan's checks read
files the same way).
"""

from __future__ import annotations

import warnings

import diffusers
import torch
import transformers
from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from safetensors import safe_open

from dbspec.families import FamilySpec, TextEncoderSpec
from dbspec.runtime import flux_original
from dbspec.weightfiles import (
    HARMLESS,
    canonical,
    encoder_prefix,
    encoder_prefixes,
    encoder_tensors,
    is_openclip,
    marker,
)

# T5 ties its input embedding: files hold one name or both
_T5_TIED = ("shared.weight", "encoder.embed_tokens.weight")


class ComponentFileError(Exception):
    """A component file cannot be loaded; the message names the file and says what to do."""


def load_denoiser_file(path: str, spec: FamilySpec, config: str | None, revision: str = ""):
    """The family's denoiser from `path` (original or diffusers layout), configured by `config` (a diffusers
    folder or hub id holding the denoiser's config in its subfolder; None: diffusers infers it)."""
    cls = getattr(diffusers, spec.denoiser_class)
    kwargs = {"config": config, "subfolder": spec.denoiser} if config else {}
    if config and revision:
        kwargs["config_revision"] = revision
    try:
        source = _own_conversion(path, cls, config, revision, spec) if config else None
        if source is not None:
            source, depth = source
            kwargs.update(depth)  # the file's own depth over the config's, as kohya builds Flux
        return cls.from_single_file(path if source is None else source, **kwargs).eval()
    except Exception as exc:  # noqa: BLE001 - any failure of a file: say which file and what to do
        raise ComponentFileError(
            f"cannot load the {spec.title} denoiser from `{path}` (model.denoiser_file) with the config of "
            f"`{config or 'the checkpoint type diffusers infers'}`: {exc}; the file must hold the same "
            "architecture as model.base's denoiser (set model.base to a model of its size and kind)"
        ) from exc


# Original layouts whose diffusers converter assumes one model size: dbspec converts them by the config
# (denoiser class -> (is this layout, convert(state, config), the file's config overrides (its depth))).
_CONVERTERS = {
    "FluxTransformer2DModel": (
        flux_original.is_original,
        flux_original.to_diffusers,
        flux_original.block_counts,
    )
}


def _own_conversion(path: str, cls, config: str, revision: str, spec: FamilySpec) -> tuple[dict, dict] | None:
    """The file's tensors in diffusers' layout and its config overrides where dbspec converts the layout
    itself, else None."""
    if spec.denoiser_class not in _CONVERTERS:
        return None
    detect, convert, overrides = _CONVERTERS[spec.denoiser_class]
    with safe_open(path, framework="pt") as f:
        if not detect(f.keys()):
            return None
        state = {k: f.get_tensor(k) for k in f.keys()}
    extra = {"revision": revision} if revision else {}
    model_config = cls.load_config(config, subfolder=spec.denoiser, **extra)
    return convert(state, model_config), overrides(state)


def load_vae_file(path: str, config: str | None, revision: str = "") -> AutoencoderKL:
    """An autoencoder from `path` (LDM or diffusers layout), configured by `config`'s vae subfolder."""
    kwargs = {"config": config, "subfolder": "vae"} if config else {}
    if config and revision:
        kwargs["config_revision"] = revision
    try:
        return AutoencoderKL.from_single_file(path, **kwargs).eval()
    except Exception as exc:  # noqa: BLE001 - any failure of a file: say which file and what to do
        raise ComponentFileError(
            f"cannot load the autoencoder from `{path}` (model.vae) with the config of "
            f"`{config or 'the checkpoint type diffusers infers'}`: {exc}"
        ) from exc


def load_text_encoder_file(path: str, encoder: TextEncoderSpec, config, key: str) -> torch.nn.Module:
    """`encoder`'s transformers model built from `config` holding the tensors of `path`; `key` names the
    option for messages (model.text_encoder_files[i])."""
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        prefix = encoder_prefix(keys, encoder)
        if prefix is None:
            found = encoder_prefixes(keys, encoder)
            raise ComponentFileError(
                f"`{path}` ({key}) holds no single {encoder.model_class} to load: "
                + (f"several under {found}" if found else f"no `{marker(encoder)}` tensor")
                + "; give this encoder's own file"
            )
        openclip = is_openclip(keys, prefix)
        if openclip:
            tensors = {k: f.get_tensor(k) for k in keys if k.startswith(prefix)}
        else:
            names = encoder_tensors(keys, prefix)
            tensors = {name: f.get_tensor(file_key) for name, file_key in names.items()}
    cls = getattr(transformers, encoder.model_class)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    if openclip:  # diffusers' converter of OpenCLIP's layout (q/k/v split from in_proj, the projection)
        converted = convert_open_clip_checkpoint(model, tensors, prefix=prefix)
        tensors = {canonical(k): v for k, v in converted.items()}
    expected = {canonical(k): k for k in model.state_dict()}
    _fill_missing(tensors, expected, path, key)
    extra = sorted(set(tensors) - set(expected))
    unknown = [k for k in extra if not k.endswith(HARMLESS) and k != "text_projection.weight"]
    if unknown:
        warnings.warn(
            f"{key}: `{path}` holds {len(unknown)} tensor(s) {encoder.model_class} has no place for, left "
            f"out (e.g. `{unknown[0]}`)",
            stacklevel=2,
        )
    state = {expected[name]: tensors[name] for name in expected}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # shapes: another size of encoder than the base model's config
        raise ComponentFileError(
            f"`{path}` ({key}) does not fit the {encoder.component} config of model.base: {exc}"
        ) from exc
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _fill_missing(tensors: dict, expected: dict, path: str, key: str) -> None:
    """Tensors a file may leave out: T5's tied embedding under its other name; SD3 CLIP-L's projection,
    which kohya's sd3_utils.load_clip_l sets to the identity when a file lacks it."""
    for one, other in (_T5_TIED, _T5_TIED[::-1]):
        if one in expected and one not in tensors and other in tensors:
            tensors[one] = tensors[other]
    projection = "text_projection.weight"
    if projection in expected and projection not in tensors:
        width = tensors.get("embeddings.token_embedding.weight")
        if width is not None:
            size = width.shape[1]
            tensors[projection] = torch.eye(size, dtype=width.dtype)
            warnings.warn(
                f"{key}: `{path}` has no text_projection; it is the identity (as kohya's load_clip_l sets)",
                stacklevel=3,
            )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ComponentFileError(
            f"`{path}` ({key}) lacks {len(missing)} tensor(s) of the text encoder, e.g. "
            + ", ".join(f"`{m}`" for m in missing[:3])
            + "; give a complete file of this encoder (transformers layout)"
        )
