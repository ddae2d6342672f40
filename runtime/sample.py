"""`dbspec sample`: images from a finished output (diffusers folder, single file, or base + LoRA)."""

from __future__ import annotations

import re
import tempfile

from pathlib import Path

import attrs
import diffusers
import torch

from dbspec.families import FAMILIES, family_spec
from dbspec.runtime.families import family_runtime
from dbspec.runtime.mixed_kinds import mixed, own_bypass
from dbspec.runtime.adapters import columns
from dbspec.plan.io import PlanFileError, read_plan
from dbspec.plan.model import Plan, ValidationPlan
from dbspec.runtime import tiny
from dbspec.runtime.execute import quiet_libraries
from dbspec.runtime.generate import render

LORA_FILES = ("pytorch_lora_weights.safetensors",)
# LyCORIS train_norm's offsets (runtime/weights.py NORM_FILES)
_NORM_FILES = ("text_encoder_norms.safetensors", "denoiser_norms.safetensors")


class SampleError(Exception):
    """The source cannot be sampled; the message says what to pass."""


@attrs.frozen(kw_only=True)
class SampleRequest:
    source: Path  # a run's output folder, its final/ folder, a diffusers folder, a .safetensors file
    base: str = ""  # base model for LoRA sources (hub id, folder, builtin:...); from the run's plan if empty
    config: str = ""  # diffusers folder or hub id with configs, for single files offline
    family: str = ""  # for single files (the CLI reads it from the file's tensor names)
    checkpoint: str = ""  # "latest", "best" or "step-NNNNNN": that checkpoint of the run folder `source`
    settings: ValidationPlan


def sample(request: SampleRequest, out: Path) -> list[Path]:
    quiet_libraries()
    pipe = load_pipeline(request).to(best_device())
    pipe.set_progress_bar_config(disable=True)
    _check_refine(pipe, request.settings)
    return render(
        pipe, attrs.evolve(request.settings, scheduler=_scheduler(pipe, request.settings.scheduler)), out
    )


def _check_refine(pipe, settings: ValidationPlan) -> None:
    """An img2img family (the SDXL refiner) refines the --image files; others sample prompts only."""
    refines = any(f.refines_images and f.pipeline_class == type(pipe).__name__ for f in FAMILIES.values())
    if refines and settings.refine is None:
        raise SampleError(f"{type(pipe).__name__} refines images: pass --image (and --strength)")
    if not refines and settings.refine is not None:
        raise SampleError(f"--image is for img2img models (the SDXL refiner), not {type(pipe).__name__}")


def _scheduler(pipe, asked: str) -> str:
    """The sampler: for "auto" the model's kind (flow_euler for a flow-matching model, else ddim); one of
    the other kind is refused (a DDPM sampler cannot run a flow-matching model, nor the reverse)."""
    flow = type(pipe.scheduler).__name__.startswith("FlowMatch")
    if asked == "auto":
        return "flow_euler" if flow else "ddim"
    if flow != (asked == "flow_euler"):
        kind = "a flow-matching model: use --scheduler flow_euler" if flow else "a DDPM model"
        raise SampleError(f"--scheduler {asked} does not fit {kind}")
    return asked


def checkpoint_folder(out: Path, name: str) -> Path:
    """Checkpoint `name` of the run folder `out`: latest, best (checkpoints.select) or step-NNNNNN."""
    from dbspec.runtime.checkpoints import best_checkpoint, latest_checkpoint

    if not (out / "checkpoints").is_dir():
        raise SampleError(f"{out} is no run output folder with checkpoints (no {out / 'checkpoints'})")
    if name == "best":
        found = best_checkpoint(out)
        if found is None:
            raise SampleError(
                f"{out} has no best checkpoint: the run needs checkpoints.select and an evaluation at a "
                "checkpoint step"
            )
        return found
    found = latest_checkpoint(out) if name == "latest" else out / "checkpoints" / name
    if found is None or not found.is_dir() or not re.fullmatch(r"latest|step-\d+", name):
        raise SampleError(f"{out} has no checkpoint {name!r} (latest, best or step-NNNNNN)")
    return found


def load_pipeline(request: SampleRequest):
    source = request.source
    if request.checkpoint:
        source = checkpoint_folder(source, request.checkpoint)
    elif source.is_dir() and (source / "final").is_dir():  # a run's output folder
        source = source / "final"
    plan = _plan_beside(source)
    if source.is_dir() and (source / "model_index.json").exists():
        return diffusers.DiffusionPipeline.from_pretrained(str(source))
    lora = _lora_file(source)
    if lora is not None:
        base = request.base or (plan.model.base if plan else "")
        if not base:
            raise SampleError(f"{source} holds LoRA weights: pass --base with the model they were trained on")
        pipe = _base_pipeline(base, plan, request)
        with tempfile.TemporaryDirectory() as scratch:
            try:
                pipe.load_lora_weights(str(_one_layout(lora, Path(scratch))))
            except (AssertionError, KeyError, ValueError, RuntimeError) as exc:
                # diffusers' key converters assert on shapes (kohya's Flux widths) and names they expect
                raise SampleError(
                    f"{lora}: diffusers cannot load it onto {base} ({type(exc).__name__}: {exc}); the file "
                    "does not fit this base model, or diffusers cannot read its key layout"
                ) from exc
        _restore_text_magnitudes(pipe, lora)
        _check_lora_layers(pipe, lora)
        return load_embeddings(_with_norms(pipe, source, plan), source, plan)
    if source.is_dir() and any((source / name / "adapter_config.json").exists() for name in _components()):
        pipe = _with_peft_adapters(source, plan, request)  # a LoHa / LoKr run's final/
        return load_embeddings(_with_norms(pipe, source, plan), source, plan)
    if source.is_dir() and any(
        (source / name).is_file() for name in _NORM_FILES
    ):  # LyCORIS NormModules alone
        base = request.base or (plan.model.base if plan else "")
        if not base:
            raise SampleError(f"{source} holds norm offsets: pass --base with the model they were trained on")
        pipe = _with_norms(_base_pipeline(base, plan, request), source, plan)
        return load_embeddings(pipe, source, plan)
    if source.is_dir() and any((source / name / "config.json").exists() for name in _components()):
        pipe = _with_full_components(source, plan, request)  # a full fine-tune's checkpoint
        return load_embeddings(pipe, source, plan)
    if source.suffix == ".safetensors":
        cls = _pipeline_class(_family(request, source))
        kwargs = {"config": request.config} if request.config else {}
        return cls.from_single_file(str(source), **kwargs)
    raise SampleError(f"{source} is no diffusers folder, LoRA output or .safetensors file")


def _one_layout(lora: Path, scratch: Path) -> Path:
    """`lora`, or where it mixes diffusers' renamed U-Net keys (`to_q.lora.down`) with peft's
    (`conv_in.lora_A`), as dbspec wrote LoCon files before, a copy in `scratch` in peft's layout with the
    same metadata: diffusers' U-Net loader reads the layout off the first key and would drop the other
    kind's layers."""
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        renamed = any(".lora.down." in k or ".lora.up." in k for k in keys)
        if not (renamed and any(".lora_A." in k or ".lora_B." in k for k in keys)):
            return lora
        state = {key: f.get_tensor(key) for key in keys}
    copy = scratch / lora.name
    save_file(convert_unet_state_dict_to_peft(state), str(copy), metadata=metadata)
    return copy


def _restore_text_magnitudes(pipe, lora: Path) -> None:
    """DoRA's magnitudes of the text encoders in a diffusers LoRA file (peft's
    `<layer>.lora_magnitude_vector`, as diffusers' own scripts save them): diffusers hands the text
    encoders' weights to transformers' `load_adapter`, which expects `<layer>.lora_magnitude_vector.weight`,
    reports them unexpected and leaves the layers at their base weight's norms, so they are copied onto the
    loaded layers here (the U-Net's / transformer's load through peft, which places them)."""
    from safetensors import safe_open

    suffix = ".lora_magnitude_vector"
    with safe_open(str(lora), framework="pt") as f:
        keys = [k for k in f.keys() if k.endswith(suffix) and k.split(".", 1)[0] in _text_encoders(pipe)]
        if not keys:
            return
        for key in keys:
            component, path = key.removesuffix(suffix).split(".", 1)
            layers = {
                name: m
                for name, m in getattr(pipe, component).named_modules()
                if isinstance(getattr(m, "lora_magnitude_vector", None), torch.nn.ModuleDict)
            }
            # the file's paths start at CLIPTextModel's `text_model.`, which transformers may leave out
            layer = layers.get(path) or layers.get(path.removeprefix("text_model."))
            if layer is None or len(layer.lora_magnitude_vector) != 1:
                raise SampleError(f"{lora}: {key} fits no DoRA layer of the loaded {component}")
            (magnitude,) = layer.lora_magnitude_vector.values()
            with torch.no_grad():
                magnitude.weight.copy_(f.get_tensor(key).to(magnitude.weight.dtype))


_LAYER_PARTS = re.compile(r"\.(lora_A|lora_B|lora|lora_linear_layer|lora_magnitude_vector)(\.|$)")


def _check_lora_layers(pipe, lora: Path) -> None:
    """Every layer the file adapts carries an adapter in the loaded pipeline: diffusers' loaders skip weights
    they do not place with a warning at most (a mixed key layout, keys of another model), and the samples
    would silently come from another model."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open

    with safe_open(str(lora), framework="pt") as f:
        keys = list(f.keys())
    layers: dict[str, set[str]] = {}
    for key in keys:
        component, _, rest = key.partition(".")
        found = _LAYER_PARTS.search(rest)
        if found is not None:
            layers.setdefault(component, set()).add(rest[: found.start()])
    counts = {component: len(names) for component, names in layers.items()}
    for component, count in _kohya_layers(pipe, keys).items():  # a kohya-layout file's modules
        counts[component] = counts.get(component, 0) + count
    for component, count in sorted(counts.items()):
        module = getattr(pipe, component, None)
        adapted = 0 if module is None else sum(isinstance(m, BaseTunerLayer) for m in module.modules())
        if adapted != count:
            raise SampleError(
                f"{lora}: diffusers loaded {adapted} of the file's {count} adapted {component} layers "
                "(the file does not fit this base model, or diffusers cannot read its key layout)"
            )


def _kohya_layers(pipe, keys: list[str]) -> dict[str, int]:
    """The diffusers layers per pipeline component that a kohya-layout file's modules adapt (`lora_unet_*` /
    `lora_te*_*` with `lora_down.weight`, which diffusers' loaders convert): one per module, the parts of a
    fused Flux / SD3 Linear each (diffusers splits it: img_attn_qkv into to_q, to_k, to_v). The text
    encoders by kohya's numbering: `lora_te_` / `lora_te1_` the first, `lora_te2_` the second (SDXL's
    CLIP-G, SD3's), T5-XXL `lora_te3_`."""
    denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    texts = [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None)]
    prefixes = {"lora_unet_": denoiser, "lora_te_": "text_encoder"}
    for i, name in enumerate(texts):
        t5 = type(getattr(pipe, name)).__name__.startswith("T5")
        prefixes["lora_te3_" if t5 else f"lora_te{i + 1}_"] = name
    fused = {
        g.kohya_name: len(g.parts)
        for f in FAMILIES.values()
        for g in f.fused_projections
        if denoiser == "transformer"
    }
    out: dict[str, int] = {}
    for key in keys:
        if not key.endswith(".lora_down.weight") or "." in key.removesuffix(".lora_down.weight"):
            continue
        module = key.removesuffix(".lora_down.weight")
        prefix = next((p for p in prefixes if module.startswith(p)), None)
        if prefix is None:
            raise SampleError(
                f"{key}: a kohya module of no component of this pipeline ({', '.join(prefixes)})"
            )
        parts = next((n for k, n in fused.items() if prefix == "lora_unet_" and module.endswith("_" + k)), 1)
        out[prefixes[prefix]] = out.get(prefixes[prefix], 0) + parts
    return out


def _text_encoders(pipe) -> set[str]:
    names = {n for f in FAMILIES.values() for n in f.text_encoder_names}
    return {n for n in names if getattr(pipe, n, None) is not None}


def load_embeddings(pipe, source: Path, plan: Plan | None):
    """The run's pivotal-tuning tokens, from the embedding files beside its weights (tokens_ti.py)."""
    if plan is None or plan.pivotal is None or not source.is_dir():
        return pipe
    from dbspec.runtime.tokens_ti import load_embeddings as load

    load(pipe, source, plan)
    return pipe


def _with_norms(pipe, source: Path, plan: Plan | None):
    """LyCORIS train_norm's offsets (runtime/norm_offsets.py) from the files beside the run's adapters
    (weights.NORM_FILES: the CLIP encoders' and the U-Net's), on the pipeline's models that hold them, so
    samples come from the trained model. The plan names the norms; the files' keys the models."""
    from dbspec.runtime.prepare import text_norms
    from dbspec.runtime.weights import NORM_FILES, load_norms

    names = [name for name in NORM_FILES if (source / name).is_file()] if source.is_dir() else []
    if plan is None or not names:
        return pipe
    from safetensors import safe_open

    from dbspec.runtime.norm_offsets import add_norm_offsets

    held = set()
    for name in names:
        with safe_open(str(source / name), framework="pt") as f:
            held |= {key.split(".", 1)[0] for key in f.keys()}
    denoiser = family_spec(plan.model.family).denoiser  # the pipeline's attribute: unet, or transformer
    modules = {c: getattr(pipe, denoiser if c == "unet" else c) for c in sorted(held)}
    for component, module in modules.items():
        norms = plan.adapter.denoiser_norms if component == "unet" else text_norms(plan.adapter, component)
        add_norm_offsets(module, norms, required=False)
    try:
        load_norms(source, modules)
    except KeyError as exc:
        raise SampleError(f"{source}: {exc.args[0]}") from None
    return pipe


def _components() -> set[str]:
    return {name for f in FAMILIES.values() for name in (f.denoiser, *f.text_encoder_names)}


def _with_peft_adapters(source: Path, plan: Plan | None, request: SampleRequest):
    """Base pipeline + the peft-format adapters (LoHa, LoKr) `weights.save_weights` wrote, one per
    component."""
    from dbspec.runtime.weights import load_peft_adapters

    base = request.base or (plan.model.base if plan else "")
    if not base:
        raise SampleError(f"{source} holds adapter weights: pass --base with the model they were trained on")
    pipe = _base_pipeline(base, plan, request)
    modules = {name: getattr(pipe, name) for name in _components() if getattr(pipe, name, None) is not None}
    if plan is not None:  # the denoiser's folder is `unet` whatever the family (weights.py save_weights)
        modules["unet"] = getattr(pipe, family_spec(plan.model.family).denoiser)
    adapter = plan.adapter if plan else None
    tlora = adapter and any(b.kind == "tlora" for b in (*adapter.blocks, *adapter.text_encoder_blocks))
    load_peft_adapters(
        source,
        modules,
        bool(adapter and adapter.lokr_unit_scale),
        bool(adapter and adapter.bypass),
        adapter.oft_form if adapter else "lycoris",
        # LoKr / LoHa / BOFT on fused layers: the adapter's own, or a kind of its blocks' (mixed_kinds.py)
        adapter
        if adapter
        and adapter.fused
        and (adapter.kind in ("lokr", "loha", "boft") or mixed(adapter) or columns(adapter))
        else None,
        bool(adapter and adapter.lokr_rank_stabilized),
        # blocks' own rs_lora (LoKr), bypass_mode (mixed_kinds.own_bypass), T-LoRA layers' (a tlora
        # adapter's, another kind's tlora blocks': training's, weights.load_peft_adapters)
        blocks=adapter
        if adapter and (adapter.kind in ("lokr", "tlora") or own_bypass(adapter) or tlora)
        else None,
    )
    oft = adapter and (adapter.kind == "diag-oft" or any(b.kind == "diag-oft" for b in adapter.blocks))
    if oft and adapter.fused:  # LyCORIS's one module per fused Linear (a run of several kinds' too)
        from dbspec.runtime.lycoris_oft import link_fused_oft

        for module in modules.values():
            link_fused_oft(module, adapter.fused, "default")
    return pipe


def _with_full_components(source: Path, plan: Plan | None, request: SampleRequest):
    """Base pipeline with the trained components a full run's checkpoint holds (`save_full_weights`)."""
    base = request.base or (plan.model.base if plan else "")
    if not base:
        raise SampleError(f"{source} holds trained components: pass --base with the model they came from")
    pipe = _base_pipeline(base, plan, request)
    for name in _components():
        if (source / name / "config.json").exists() and getattr(pipe, name, None) is not None:
            module = type(getattr(pipe, name)).from_pretrained(str(source / name))
            pipe.register_modules(**{name: module})
    return pipe


def _plan_beside(source: Path) -> Plan | None:
    """The run's plan next to its output, for the base model of a LoRA. One this dbspec cannot read (another
    plan version, edited) is no hint at all: then --base is asked for."""
    for folder in (source, source.parent):
        path = folder / "plan.json"
        if folder.is_dir() and path.exists():
            try:
                return read_plan(path)
            except PlanFileError:
                return None
    return None


def _lora_file(source: Path) -> Path | None:
    if source.is_file() and source.suffix == ".safetensors" and _is_lora(source):
        if _is_lycoris(source):
            raise SampleError(
                f"{source} holds LyCORIS LoHa/LoKr (or LoCon Tucker) weights, which diffusers does not load "
                "for this model: "
                "sample the run's output folder (its final/ holds them in peft's layout)"
            )
        return source
    for name in LORA_FILES:
        if (source / name).exists():
            return source / name
    return None


def _is_lora(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        # kohya's networks.oft names its modules `oft_unet_*`
        return any("lora" in key or key.endswith(".oft_blocks") for key in list(f.keys())[:50])


def _is_lycoris(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return any(
            ".hada_" in key
            or ".lokr_" in key
            or ".lora_mid." in key
            # .a1: GLoRA, .lambda_layer: T-LoRA
            or key.endswith((".diff", ".diff_b", ".on_input", ".oft_blocks", ".a1.weight", ".lambda_layer"))
            for key in f.keys()
        )


def _base_pipeline(base: str, plan: Plan | None, request: SampleRequest):
    pipe = _unmerged_base_pipeline(base, plan, request)
    if plan is not None and plan.model.base == base and plan.model.merge_adapters:  # kohya --base_weights
        from dbspec.families import family_spec
        from dbspec.runtime.merge_adapters import merge_adapters

        spec = family_spec(plan.model.family)
        encoders = [getattr(pipe, name) for name in spec.text_encoder_names]
        merge_adapters(plan, getattr(pipe, spec.denoiser), encoders)
    return pipe


def _unmerged_base_pipeline(base: str, plan: Plan | None, request: SampleRequest):
    planned = (
        plan.model if plan and plan.model.base == base else None
    )  # the run's own base: use its resolution
    if base.startswith("builtin:"):
        folder = (
            Path(planned.path)
            if planned
            else Path.home() / ".cache" / "dbspec" / "models" / base.replace(":", "-")
        )
        return diffusers.DiffusionPipeline.from_pretrained(str(tiny.materialize(base, folder)))
    if Path(base).suffix == ".safetensors":
        family = plan.model.family if plan else _family(request, Path(base))
        kwargs = {"config": request.config} if request.config else {}
        return _pipeline_class(family).from_single_file(base, **kwargs)
    path = planned.path if planned and planned.path else base
    return diffusers.DiffusionPipeline.from_pretrained(path)


def _family(request: SampleRequest, path: Path) -> str:
    if not request.family:
        known = ", ".join(FAMILIES)
        raise SampleError(f"cannot tell the model family of {path}: pass --family ({known})")
    return request.family


def _pipeline_class(family: str):
    return family_runtime(family).pipeline_class()


def best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
