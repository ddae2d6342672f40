"""`adapter.init_weights` on SD 1.x/2.x / SDXL whose blocks give some layers a weight-decomposition axis of
their own (LyCORIS preset entries' `wd_on_out`, a block's `dora_axis`): each file `dora_scale` checked against
its layer's axis at plan time, the layer found among the base model's layers (its diffusers folder's
safetensors headers), as kohya names it (diffusers' path with `.` written `_`; SDXL's original layout read
back onto diffusers'). LoConModule / LohaModule / LokrModule build their `dora_scale` in their own axis shape,
so LycorisNetworkKohya.load_weights' load_state_dict fails with a size mismatch on the other's."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from dbspec.compiler.init_file import kohya_component_prefixes, other_axis_doras
from dbspec.families import family_spec
from dbspec.unet_layout import diffusers_name

# a plan component -> {layer path: parameters} of the base model (compile.py model_layers); empty: unknown
Layers = Mapping[str, Mapping[str, int]]


def block_axes(adapter) -> bool:
    """Some block sets a weight-decomposition axis of its own."""
    blocks = (*getattr(adapter, "blocks", ()), *getattr(adapter, "text_encoder_blocks", ()))
    return any(getattr(b, "dora_axis", "adapter") != "adapter" for b in blocks)


def own_axis_doras(
    shapes: Mapping[str, tuple[int, ...]], adapter, family: str, layers: Callable[[], Layers]
) -> list[str]:
    """The file's `dora_scale` tensors (tensor name -> shape) shaped for the other axis than their layer's:
    the first block whose pattern matches the layer decides (its own `dora_axis`, else the adapter's), as
    runtime/blocks.py; a module whose layer the model's files do not list is left to the run's load."""
    keys = [k for k in shapes if k.endswith(".dora_scale")]
    if not keys:
        return []
    known = layers()
    prefixes = kohya_component_prefixes(family)
    original = family_spec(family).kohya.original_unet_names
    paths = {
        component: {path.replace(".", "_"): path for path in known.get(component, {})}
        for component in set(prefixes.values())
    }
    found: list[str] = []
    for key in sorted(keys):
        module = key.removesuffix(".dora_scale")
        prefix = next((p for p in prefixes if module.startswith(p)), None)
        if prefix is None:
            continue
        component, tail = prefixes[prefix], module.removeprefix(prefix)
        denoiser = component == family_spec(family).denoiser
        if denoiser and original:
            try:
                tail = diffusers_name(tail)
            except ValueError:
                continue  # outside the original layout: the plan's other checks name it
        path = paths[component].get(tail)
        if path is None:
            continue
        blocks = adapter.blocks if denoiser else adapter.text_encoder_blocks
        searched = path if denoiser else f"{component}.{path}"
        block = next((b for b in blocks if re.search(b.pattern, searched)), None)
        own = getattr(block, "dora_axis", "adapter") if block is not None else "adapter"
        axis = adapter.dora_axis if own == "adapter" else own
        mine = {k: v for k, v in shapes.items() if k.startswith(f"{module}.")}
        found += [f"{problem} (layer {path}: dora_axis {axis})" for problem in other_axis_doras(mine, axis)]
    return found
