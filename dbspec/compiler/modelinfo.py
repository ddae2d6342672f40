"""What a base model is, read from its configs and safetensors headers (a torch.save checkpoint's pickle read
without running it: pickle_weights.py): no torch, no weights loaded.

`inspect_model` answers family (sd1/sd2/sdxl), prediction type, exact parameter counts and stored dtype per
component, and a cheap identity for cache keys, for a diffusers folder, a single-file checkpoint or a hub id
already in the local Hugging Face cache. It never runs a pickle's code and never reaches the network.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from dbspec.families import FAMILIES
from dbspec.families import Family as ModelFamily
from dbspec.compiler.pickle_weights import TorchOnlyError, read_pickle_weights
from dbspec.compiler.safetensors_header import (
    ModelFileError,
    TensorInfo,
    count_params,
    dominant_dtype,
    file_fingerprint,
    merged_tensors,
    read_json_object,
    read_safetensors,
    read_sharded_index,
)

__all__ = ["ModelFacts", "ModelFileError", "hub_cache_dir", "inspect_model", "layer_params"]

Source = Literal["diffusers", "single_file", "ckpt", "hub"]
Family = Literal[ModelFamily, "unknown"]  # the registry's families, or not recognised
Prediction = Literal["epsilon", "v_prediction", "flow_matching", "unknown"]
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")  # "unet": the denoiser
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@attrs.frozen(kw_only=True)
class ModelFacts:
    source: Source
    base: str  # as the user wrote it
    path: str  # resolved absolute path; "" when unresolved
    resolved: bool
    family: Family
    prediction: Prediction
    params: dict[str, int]  # component -> parameter count of the stored tensors; only components known
    dtypes: dict[str, str]  # component -> stored floating dtype holding most elements, e.g. "F16"
    identity: str  # "sha256:..." over configs and weight-file fingerprints; "" when unresolved
    component_ids: dict[str, str]  # component -> identity of that component alone (e.g. VAE latent caches)
    variant: str = ""  # "fp16" when some component exists only as *.fp16.safetensors (diffusers `variant=`)
    notes: tuple[str, ...] = ()


def inspect_model(base: str, spec_dir: Path, *, revision: str = "main") -> ModelFacts | None:
    """Facts about `[model] base`; None for builtin: models. Raises ModelFileError for missing
    or corrupt files."""
    if base.startswith("builtin:"):
        return None
    local = (Path(spec_dir) / Path(base).expanduser()).absolute()
    try:
        return _inspect_path(base, local, revision)
    except OSError as exc:  # probing the path itself failed (name too long, no permission): the user's to fix
        name = str(exc.filename or local)
        reason = (
            f"the path is too long for the file system ({len(name)} characters)"
            if exc.errno == errno.ENAMETOOLONG
            else str(exc.strerror or exc)
        )
        raise ModelFileError(name, reason) from exc


def _inspect_path(base: str, local: Path, revision: str) -> ModelFacts:
    if local.is_dir():
        return _inspect_diffusers(base, local, source="diffusers")
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix == ".safetensors":
            return _inspect_single_file(base, local)
        if suffix in _PICKLE_SUFFIXES:
            return _inspect_pickle(base, local)
        raise ModelFileError(
            local, "not a model: expected a diffusers folder, a .safetensors or a .ckpt file"
        )
    if _HUB_ID.match(base) and not base.lower().endswith((".safetensors", *_PICKLE_SUFFIXES)):
        return _inspect_hub(base, revision)
    raise ModelFileError(local, "no such file or folder")


# --- diffusers folders -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Weights:
    files: tuple[Path, ...]  # every file read: index and shards, or the single weight file
    variant: str
    tensors: list[tuple[str, TensorInfo]] | None  # None: pickled .bin, contents unknown


def _inspect_diffusers(base: str, root: Path, *, source: Source, notes: tuple[str, ...] = ()) -> ModelFacts:
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ModelFileError(root, "not a diffusers pipeline folder: model_index.json is missing")
    index = read_json_object(index_path)
    unet_config = (
        read_json_object(root / "unet" / "config.json") if (root / "unet" / "config.json").is_file() else None
    )
    family, family_notes = _family_from_unet_config(unet_config)
    transformer = _transformer_family(root) if unet_config is None else None
    if transformer is not None:
        family, family_notes = transformer, ()
    folders = {"unet": FAMILIES[family].denoiser} if family in FAMILIES else {}
    prediction, prediction_notes = _prediction_from_scheduler(root / "scheduler" / "scheduler_config.json")
    params, dtypes, ids, variants, weight_notes = {}, {}, {}, set(), []
    for name in (c for c in COMPONENTS if _declared(index, folders.get(c, c))):
        weights = _component_weights(root / folders.get(name, name))
        config = root / folders.get(name, name) / "config.json"
        ids[name] = _identity([config] if config.is_file() else [], weights.files if weights else ())
        if weights is None:
            weight_notes.append(f"{name}: no weight files in {root / name}")
            continue
        variants.add(weights.variant)
        if weights.tensors is None:
            weight_notes.append(
                f"{name}: weights are pickled .bin files; parameter count unknown (never unpickled)"
            )
            continue
        params[name], dtypes[name] = count_params(weights.tensors), dominant_dtype(weights.tensors)
    identity = _identity(
        [index_path, root / "scheduler" / "scheduler_config.json"], (), extra=sorted(ids.items())
    )
    variant = next((v for v in ("fp16", "bf16") if v in variants), "")
    return ModelFacts(
        source=source, base=base, path=str(root), resolved=True, family=family, prediction=prediction,
        params=params, dtypes=dtypes, identity=identity, component_ids=ids, variant=variant,
        notes=(*notes, *family_notes, *prediction_notes, *weight_notes),
    )  # fmt: skip


def _declared(index: dict, component: str) -> bool:
    """model_index.json lists a component as [library, class]; [null, null] means absent."""
    entry = index.get(component)
    return isinstance(entry, list) and len(entry) == 2 and None not in entry


def _transformer_family(root: Path) -> Family | None:
    """A family whose denoiser is not a UNet (SD3's transformer), by its folder's config class."""
    for f in FAMILIES.values():
        config = root / f.denoiser / "config.json"
        if (
            f.denoiser != "unet"
            and config.is_file()
            and read_json_object(config).get("_class_name") == f.denoiser_class
        ):
            return f.name
    return None


def _family_from_unet_config(config: dict | None) -> tuple[Family, tuple[str, ...]]:
    if config is None:
        return "unknown", ("unet/config.json is missing; set [model] family",)
    dim = config.get("cross_attention_dim")
    dim = dim[0] if isinstance(dim, list) and dim else dim
    text_time = config.get("addition_embed_type") == "text_time"
    family = next(
        (f.name for f in FAMILIES.values() if (f.context_dim, f.extra_conditioning) == (dim, text_time)),
        "unknown",
    )
    notes = ("inpainting UNet (9 input channels)",) if config.get("in_channels") == 9 else ()
    if family == "unknown":
        what = f"cross_attention_dim {dim}" + (" with text_time embeddings" if text_time else "")
        known = ", ".join(
            f"{f.title} ({f.context_dim}{' + text_time' if f.extra_conditioning else ''})"
            for f in FAMILIES.values()
        )
        notes += (f"unet {what} is none of {known}; set [model] family",)
    return family, notes


def _prediction_from_scheduler(path: Path) -> tuple[Prediction, tuple[str, ...]]:
    if not path.is_file():
        return "unknown", (f"{path.parent.name}/{path.name} is missing; set [model] prediction",)
    config = read_json_object(path)
    if str(config.get("_class_name", "")).startswith("FlowMatch"):
        return "flow_matching", ()  # flow-matching schedulers have no prediction_type
    value = config.get("prediction_type", "epsilon")  # diffusers schedulers default to epsilon
    if value in ("epsilon", "v_prediction"):
        return value, ()
    return "unknown", (f"scheduler prediction_type {value!r} is not supported; set [model] prediction",)


def _component_weights(folder: Path) -> _Weights | None:
    """The weight files diffusers would load: plain before variants, safetensors before pickles."""
    for variant in ("", "fp16", "bf16"):
        for stem in ("diffusion_pytorch_model", "model"):
            single = folder / _with_variant(f"{stem}.safetensors", variant)
            if single.is_file():
                return _Weights(files=(single,), variant=variant, tensors=_tensors_of([single]))
            index = folder / _with_variant(f"{stem}.safetensors.index.json", variant)
            if index.is_file():
                shards = read_sharded_index(index)
                return _Weights(files=(index, *shards), variant=variant, tensors=_tensors_of(shards))
    for variant in ("", "fp16", "bf16"):
        for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json"):
            pickled = folder / _with_variant(name, variant)
            if pickled.is_file():
                return _Weights(files=(pickled,), variant=variant, tensors=None)
    return None


def layer_params(folder: str | os.PathLike) -> dict[str, int]:
    """Each layer's parameters (its `.weight` and `.bias` together) in a diffusers component folder's
    safetensors, by module path; empty where the folder holds none (pickled .bin files, a missing folder)."""
    weights = _component_weights(Path(folder)) if Path(folder).is_dir() else None
    out: dict[str, int] = {}
    for name, info in (weights.tensors or []) if weights else []:
        module, _, leaf = name.rpartition(".")
        if module and leaf in ("weight", "bias"):
            out[module] = out.get(module, 0) + info.numel
    return out


def _with_variant(name: str, variant: str) -> str:
    """diffusers' `_add_variant`: the variant goes before the last suffix (model.fp16.safetensors)."""
    if not variant:
        return name
    stem, _, last = name.rpartition(".")
    return f"{stem}.{variant}.{last}"


def _tensors_of(files: Sequence[Path]) -> list[tuple[str, TensorInfo]]:
    return merged_tensors(read_safetensors(f).tensors for f in files)


# --- single-file checkpoints (original Stable Diffusion layout) -------------------------------------

_UNET, _VAE = "model.diffusion_model.", "first_stage_model."
# Original-layout text-encoder prefixes per family (diffusers' CHECKPOINT_KEY_NAMES agree).
_TEXT_ENCODERS: dict[str, dict[str, str]] = {
    f.name: {e.component: e.single_file_prefix for e in f.text_encoders} for f in FAMILIES.values()
}
_CONTEXT_DIMS = {f.context_dim: f.name for f in FAMILIES.values()}
_V_WORDS = ("v", "v_prediction", "v-prediction", "v_pred", "v-pred", "vpred", "velocity")


def _inspect_single_file(base: str, path: Path) -> ModelFacts:
    header = read_safetensors(path)
    return _single_file_facts(base, path, header.tensors, header.metadata, "single_file")


def _single_file_facts(
    base: str, path: Path, tensors: dict[str, TensorInfo], metadata: dict[str, str], source: Source
) -> ModelFacts:
    family, notes = _single_file_family(tensors)
    prediction, prediction_notes = _single_file_prediction(family, tensors, metadata)
    encoders = _TEXT_ENCODERS.get(family) or next(
        (enc for enc in _TEXT_ENCODERS.values() if any(_has(tensors, p) for p in enc.values())), {}
    )
    prefixes = {"unet": _UNET, "vae": _VAE, **encoders}
    params, dtypes, ids = {}, {}, {}
    for component in (c for c in COMPONENTS if c in prefixes):
        part = [(n, t) for n, t in tensors.items() if n.startswith(prefixes[component])]
        if part:
            params[component], dtypes[component] = count_params(part), dominant_dtype(part)
            ids[component] = _identity([], [path], extra=[component])  # any change to the file changes all
        elif family != "unknown":
            notes += (f"the checkpoint holds no {component} weights ({prefixes[component]}*)",)
    return ModelFacts(
        source=source, base=base, path=str(path), resolved=True, family=family, prediction=prediction,
        params=params, dtypes=dtypes, identity=_identity([], [path]), component_ids=ids,
        notes=(*notes, *prediction_notes),
    )  # fmt: skip


def _single_file_family(tensors: dict[str, TensorInfo]) -> tuple[Family, tuple[str, ...]]:
    if not any(n.startswith(_UNET) for n in tensors):
        return "unknown", (
            f"no {_UNET}* tensors: not a Stable Diffusion checkpoint (a LoRA or a lone component?)",
        )
    marked = next(
        (f.name for f in FAMILIES.values() if f.single_file_marker and _has(tensors, f.single_file_marker)),
        None,
    )
    if marked is not None:
        return marked, ()
    notes: tuple[str, ...] = ()
    inpaint = tensors.get(_UNET + "input_blocks.0.0.weight")
    if inpaint is not None and len(inpaint.shape) == 4 and inpaint.shape[1] == 9:
        notes += ("inpainting UNet (9 input channels)",)
    by_encoder = next(
        (f for f, enc in _TEXT_ENCODERS.items() if all(_has(tensors, p) for p in enc.values())), None
    )
    # Cross-attention keys project the text context: their input size is the family's context_dim.
    to_k = [t for n, t in sorted(tensors.items()) if n.startswith(_UNET) and n.endswith("attn2.to_k.weight")]
    by_context = _CONTEXT_DIMS.get(to_k[0].shape[-1]) if to_k and to_k[0].shape else None
    if by_encoder and by_context and by_encoder != by_context:
        return "unknown", (
            *notes,
            f"text encoder keys say {by_encoder} but the UNet context size says {by_context}",
        )
    family = by_encoder or by_context
    if family is None:
        titles = ", ".join(f.title for f in FAMILIES.values())
        return "unknown", (
            *notes,
            f"cannot tell the family ({titles}) from the tensor names; set [model] family",
        )
    return family, notes


def _has(tensors: dict[str, TensorInfo], prefix: str) -> bool:
    return any(n.startswith(prefix) for n in tensors)


def _single_file_prediction(
    family: Family, tensors: dict[str, TensorInfo], metadata: dict[str, str]
) -> tuple[Prediction, tuple[str, ...]]:
    declared = metadata.get("modelspec.prediction_type", "").strip().lower()
    if declared in _V_WORDS or declared in ("epsilon", "eps"):
        return ("epsilon" if declared.startswith("eps") else "v_prediction"), ()
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-v2"):  # kohya writes -768-v for v models, -512 otherwise
        return ("v_prediction" if architecture.endswith("-v") else "epsilon"), ()
    if "v_pred" in tensors or metadata.get("v_pred", "").strip().lower() in ("true", "1", "yes"):
        return "v_prediction", ()  # the marker ComfyUI and NoobAI-style v-pred checkpoints carry
    if "edm_vpred.sigma_max" in tensors or "edm_mean" in tensors:
        return "unknown", ("an EDM-schedule checkpoint; EDM training is not supported",)
    spec = FAMILIES.get(family)
    if spec is not None and not spec.prediction_hint:
        return spec.prediction, ()
    hint = f"{spec.title} weights do not say it ({spec.prediction_hint})" if spec else ""
    return "unknown", (f"prediction type unknown{': ' + hint if hint else ''}; set [model] prediction",)


def _inspect_pickle(base: str, path: Path) -> ModelFacts:
    """A torch.save checkpoint read as a .safetensors single file is (its `state_dict`), without running its
    pickle (pickle_weights.py); torch's legacy format, unread without torch, gives unknown facts."""
    try:
        weights = read_pickle_weights(path)
    except TorchOnlyError as exc:
        note = f"{exc.reason}; or set [model] family and prediction"
        return _unknown_facts("ckpt", base, path=str(path), identity=_identity([], [path]), note=note)
    facts = _single_file_facts(base, path, weights.infos(), {}, "ckpt")
    if not weights.foreign:
        return facts
    named = ", ".join(f"`{g}`" for g in weights.foreign)
    note = (
        f"its pickle names {named}, which torch.load(weights_only=True) refuses: the run loads it only with "
        "model.allow_pickle = true"
    )
    return attrs.evolve(facts, notes=(*facts.notes, note))


def _unknown_facts(source: Source, base: str, *, path: str, identity: str, note: str) -> ModelFacts:
    return ModelFacts(
        source=source, base=base, path=path, resolved=bool(path), family="unknown", prediction="unknown",
        params={}, dtypes={}, identity=identity, component_ids={}, notes=(note,),
    )  # fmt: skip


# --- hub ids in the local Hugging Face cache ---------------------------------------------------------


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub."""
    env = os.environ
    hub_cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")  # the second is the legacy name
    if hub_cache:
        return Path(os.path.expandvars(hub_cache)).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    cache_home = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache_home / "huggingface" / "hub"


def _inspect_hub(repo_id: str, revision: str) -> ModelFacts:
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = (
        revision
        if re.fullmatch(r"[0-9a-f]{40}", revision)
        else ref.read_text().strip()
        if ref.is_file()
        else ""
    )
    snapshot = repo_dir / "snapshots" / commit if commit else None
    if snapshot is None or not (snapshot / "model_index.json").is_file():
        flag = "" if revision == "main" else f" --revision {revision}"
        note = (
            f"{repo_id} is not in the local Hugging Face cache ({repo_dir}); `dbspec run` will download it, "
            f"or run `huggingface-cli download {repo_id}{flag}`"
        )
        return _unknown_facts("hub", repo_id, path="", identity="", note=note)
    return _inspect_diffusers(repo_id, snapshot, source="hub", notes=(f"hub snapshot {commit} ({revision})",))


# --- shared helpers ----------------------------------------------------------------------------------


def _identity(configs: list[Path], weights: Sequence[Path], extra: Sequence = ()) -> str:
    """Hash of config contents and weight-file fingerprints: cheap (no weight bytes read),
    stable across moves."""
    digest = hashlib.sha256()
    for path in configs:
        body = path.read_bytes() if path.is_file() else b"<absent>"
        digest.update(f"config {path.parent.name}/{path.name} ".encode() + hashlib.sha256(body).digest())
    for path in weights:
        digest.update(f"weights {path.name} {file_fingerprint(path)}\n".encode())
    digest.update(json.dumps(list(extra)).encode())
    return "sha256:" + digest.hexdigest()[:32]
