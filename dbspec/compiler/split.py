"""optimizer.split settled where it can be: the chunks (tensors, rate, components) listed in the plan.

The chunks are `dbspec.plan.split.split_chunks` of the trained tensors in sequence (the denoiser's, then the
text encoders', each with its group's rate), so the plan can list them when it knows how many tensors every
trained component holds and every trained component trains whole (no adapter, no pivotal tokens): from the
headers of a diffusers folder (or a hub snapshot in the local cache), from a single-file UNet checkpoint's
denoiser (its original keys map one to one), and for the built-in tiny models from `BUILTIN_TENSORS`; with
[[optimizer.blocks]] (each block's tensors at its rate, kohya sdxl_train.py's block_lr) from the parameter
paths of a diffusers folder or an SDXL single file, each chunk naming the block groups it holds. Else the plan
lists none and the run notes the chunks it cut. The runtime cuts the loaded models' tensors and refuses to
train when they do not come to the plan's chunks.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from dbspec.compiler.modelinfo import _component_weights
from dbspec.compiler.safetensors_header import read_safetensors
from dbspec.families import family_spec
from dbspec.plan.model import ModelPlan, OptimizerPlan, PrecisionPlan, SplitChunk
from dbspec.plan.split import split_chunks
from dbspec.unet_layout import SDXL_UNET, diffusers_name

# The built-in tiny models' parameter tensors per component (tests/runtime/test_optimizer_split.py builds
# each and counts them).
BUILTIN_TENSORS: dict[str, dict[str, int]] = {
    "builtin:tiny-sd1": {"unet": 208, "text_encoder": 52},
    "builtin:tiny-sd2": {"unet": 208, "text_encoder": 52},
    "builtin:tiny-sdxl": {"unet": 428, "text_encoder": 52, "text_encoder_2": 53},
    "builtin:tiny-sdxl-refiner": {"unet": 428, "text_encoder_2": 53},
    "builtin:tiny-sd3": {"unet": 74, "text_encoder": 53, "text_encoder_2": 53, "text_encoder_3": 21},
    "builtin:tiny-flux": {"unet": 66, "text_encoder": 52, "text_encoder_2": 21},
}
# Stored tensors that are no parameters (older transformers saved CLIP's position ids)
_BUFFERS = (".position_ids",)


def with_split_chunks(
    o: OptimizerPlan, model: ModelPlan, precision: PrecisionPlan, pivotal: bool
) -> OptimizerPlan:
    """The optimizer plan with its chunks listed when optimizer.split > 1 and they can be known."""
    if o.split <= 1 or pivotal:
        return o
    if o.text_encoder_2_lr is not None and len(family_spec(model.family).text_encoders) > 2:
        return o  # runtime/optim.param_groups' groups for a third encoder beside the second's own rate
    trained = [c.name for c in precision.components if c.trainable != "frozen"]
    if any(c.trainable == "lora" for c in precision.components):
        return o  # the adapters' tensors exist once peft injects them
    groups: list[tuple[str, float, int | None]] = []
    for name in (n for n in trained if n != "vae"):
        if name == "unet" and o.blocks:  # [[optimizer.blocks]]: the denoiser's groups, counted by name
            blocks = block_groups(o, tensor_names(model, "unet"))
            if blocks is None:
                return o  # the run notes the chunks it cut
            groups += blocks
        else:
            groups.append((name, _rate(o, model, name), tensor_count(model, name)))
    if any(count is None for _, _, count in groups):
        return o
    sequence = [(name, lr) for name, lr, count in groups for _ in range(count or 0)]
    chunks = tuple(
        SplitChunk(
            tensors=len(chunk),
            lr=sequence[chunk[0]][1],
            spans=tuple(dict.fromkeys(sequence[i][0] for i in chunk)),
        )
        for chunk in split_chunks([lr for _, lr in sequence], o.split)
    )
    return attrs.evolve(o, split_chunks=chunks)


def block_groups(o: OptimizerPlan, names: list[str] | None) -> list[tuple[str, float, int | None]] | None:
    """The denoiser's optimizer groups under [[optimizer.blocks]] as runtime/optimizer_blocks.py builds them
    from its parameter paths `names` (None: unknown): each tensor in the first block whose pattern
    re.search-es its path; those no block matches in the `unet` group at the denoiser's rate, ahead; then
    each block above rate 0 that holds tensors, in order (a block at 0 is out of the optimizer, as kohya's
    block_lr leaves it): (group, rate, tensors)."""
    if names is None:
        return None
    counts = dict.fromkeys((b.name for b in o.blocks), 0)
    rest = 0
    for name in names:
        block = next((b for b in o.blocks if re.search(b.pattern, name)), None)
        if block is None:
            rest += 1
        else:
            counts[block.name] += 1
    own = [(b.name, b.lr, counts[b.name]) for b in o.blocks if b.lr > 0 and counts[b.name]]
    return [*([("unet", o.lr, rest)] if rest else []), *own]


def tensor_names(model: ModelPlan, component: str) -> list[str] | None:
    """The parameter paths of `component` in a diffusers folder (or a hub snapshot in the local cache), as
    the loaded model names them, or of an SDXL single file's U-Net (its original keys read onto diffusers'
    paths, dbspec/unet_layout.py: SDXL base's layout, kohya sdxl_train.py's usual checkpoint); None where the
    plan cannot read them (other single files, the built-in models)."""
    if model.source == "builtin" or not model.path:
        return None
    path = Path(model.path)
    if model.source == "single_file":
        return _single_file_unet_names(model, path) if component == "unet" else None
    if not (path / "model_index.json").is_file():
        return None
    folder = family_spec(model.family).denoiser if component == "unet" else component
    weights = _component_weights(path / folder)
    if weights is None or weights.tensors is None:
        return None
    return [name for name, _ in weights.tensors if not name.endswith(_BUFFERS)]


_ORIGINAL_UNET = "model.diffusion_model."


def _single_file_unet_names(model: ModelPlan, path: Path) -> list[str] | None:
    """An SDXL base single file's U-Net parameter paths under diffusers' names; None for another layout or a
    key outside SDXL base's U-Net layout."""
    if family_spec(model.family).kohya.base_version != "sdxl_base_v1-0":  # SDXL_UNET: SDXL base's layout
        return None
    keys = [k[len(_ORIGINAL_UNET) :] for k in read_safetensors(path).tensors if k.startswith(_ORIGINAL_UNET)]
    try:
        return [diffusers_name(key, SDXL_UNET, ".") for key in keys]
    except ValueError:
        return None


def _rate(o: OptimizerPlan, model: ModelPlan, name: str) -> float:
    """The rate of a component's group as runtime/optim.param_groups gives it."""
    if name == "unet":
        return o.lr
    second = family_spec(model.family).text_encoder_names[1:2]
    if o.text_encoder_2_lr is not None and (name,) == second:
        return o.text_encoder_2_lr
    third = family_spec(model.family).text_encoder_names[2:3]
    if o.text_encoder_3_lr is not None and (name,) == third:
        return o.text_encoder_3_lr
    return o.text_encoder_lr


def tensor_count(model: ModelPlan, component: str) -> int | None:
    """How many parameter tensors `component` ("unet" the denoiser) of the base model holds; None unknown."""
    if model.source == "builtin":
        return BUILTIN_TENSORS.get(model.base, {}).get(component)
    if not model.path:
        return None
    path = Path(model.path)
    if model.source == "single_file":
        denoiser_layout = family_spec(model.family).objective == "ddpm"  # the UNet's keys map one to one
        if component != "unet" or not denoiser_layout:
            return None
        names = read_safetensors(path).tensors
        return sum(1 for name in names if name.startswith("model.diffusion_model."))
    if not (path / "model_index.json").is_file():
        return None
    names = tensor_names(model, component)
    return None if names is None else len(names)
