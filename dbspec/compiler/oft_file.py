"""kohya's networks.oft files (sd-scripts networks/oft.py, OFTNetwork.save_weights: its state dict): each
U-Net module `oft_unet_<kohya module name>` holds `.oft_blocks` (blocks, size, size) and a scalar `.alpha`
(its constraint per row); kohya's networks.oft_flux (Flux) holds a list of blocks per module instead, one
`.oft_blocks.<part>` per part of a fused layer's rows (one on other layers). Read from the header alone,
plus the few bytes of each alpha, without torch: the plan checks a starting file (`adapter.init_weights`)
and the converter builds kohya's create_network_from_weights network (`--dim_from_weights`) from it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from dbspec.compiler.lora_file import _scalar, diffusers_tail, kohya_suffix
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import read_raw_weights

PREFIX = "oft_unet_"
_ALPHA = ".alpha"
_BLOCKS = re.compile(r"(.+)\.oft_blocks(?:\.(\d+))?")  # networks.oft: `.oft_blocks`; oft_flux: `.<part>`


@attrs.frozen(kw_only=True)
class OftModule:
    name: str  # kohya's module name, e.g. oft_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q
    blocks: int | None  # oft_blocks' first dimension (None: the module has an alpha alone)
    shape: tuple[int, ...]  # oft_blocks' shape (() without one; networks.oft_flux: its first part's)
    alpha: float | None  # None: the module has no alpha
    parts: int = 0  # networks.oft_flux: its `.oft_blocks.<part>` tensors; 0 in networks.oft's layout


@attrs.frozen(kw_only=True)
class OftFile:
    path: str
    modules: dict[str, OftModule]
    # every key in kohya's load order (create_network_from_weights walks the state dict in this order: the
    # sorted names safetensors' load_file returns)
    keys: tuple[str, ...]
    alphas: dict[str, float]  # key -> value of each `.alpha`


def read_oft_file(path: str | os.PathLike) -> OftFile:
    """The modules of a kohya networks.oft file; ModelFileError when a key is not `<module>.oft_blocks` or
    `<module>.alpha`, or a tensor is not shaped as OFTModule's."""
    path = Path(path)
    raw = read_raw_weights(path)
    header = raw.header
    keys = tuple(sorted(header))
    modules: dict[str, dict] = {}
    alphas: dict[str, float] = {}
    for key in keys:
        blocks = _BLOCKS.fullmatch(key)
        if blocks is None and not key.endswith(_ALPHA):
            raise ModelFileError(
                path,
                f"tensor `{key}` is not in kohya's networks.oft layout (`oft_unet_*` modules with "
                "`.oft_blocks` and `.alpha`)",
            )
        if blocks is None:
            entry = modules.setdefault(key[: -len(_ALPHA)], {})
            alphas[key] = entry["alpha"] = _scalar(path, key, header[key], raw)
            continue
        entry = modules.setdefault(blocks[1], {})
        shape = tuple(header[key].get("shape") or ())
        if len(shape) != 3 or shape[1] != shape[2] or not shape[0]:
            raise ModelFileError(path, f"`{key}` has shape {list(shape)}, not (blocks, size, size)")
        if "shape" in entry and entry["shape"][0] != shape[0]:
            raise ModelFileError(
                path, f"`{key}` holds {shape[0]} blocks, its module's other parts more or less"
            )
        entry.setdefault("shape", shape)
        entry["parts"] = entry.get("parts", 0) + (blocks[2] is not None)
    if not keys:
        raise ModelFileError(path, "holds no tensor")
    return OftFile(
        path=str(path),
        modules={
            name: OftModule(
                name=name,
                blocks=entry["shape"][0] if "shape" in entry else None,
                shape=entry.get("shape", ()),
                alpha=entry.get("alpha"),
                parts=entry.get("parts", 0),
            )
            for name, entry in modules.items()
        },
        keys=keys,
        alphas=alphas,
    )


def adapts(name: str, targets, original_names: bool) -> bool:
    """Whether kohya's OFT module `name` is a layer that `targets` (dbspec's denoiser and convolution target
    suffixes, diffusers' names) adapt; `original_names`: SDXL's kohya names follow the original U-Net
    layout, whose ResNet and sampler layers end in other words."""
    if not name.startswith(PREFIX):
        return False
    lora_name = "lora_unet_" + name.removeprefix(PREFIX)
    if original_names:
        lora_name = diffusers_tail(lora_name)
    return any(lora_name.endswith(kohya_suffix(t)) for t in targets)
