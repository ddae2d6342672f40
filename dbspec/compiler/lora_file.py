"""A LoRA file read without torch (`.safetensors`, or torch.save's `.pt` / `.ckpt` / `.pth`: weight_file.py):
kohya's layout (`lora_unet_*` / `lora_te*_*` modules with `.lora_down.weight`, `.lora_up.weight` and a scalar
`.alpha`), as kohya sd-scripts' networks/lora.py saves it and dbspec's `kohya_lora` export writes it.

The plan checks a starting file (`adapter.init_weights`, kohya `--network_weights`) against the adapter
from the header alone, plus the few bytes of each scalar alpha; the converter reads the ranks kohya's
`--dim_from_weights` takes from the file the same way."""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import attrs

from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import RawWeights, read_raw_weights

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_MID = ".lora_mid.weight"  # LyCORIS LoCon's Tucker core
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")  # te3: Flux/SD3 T5
# Scalar dtypes an alpha is stored in, as struct formats (bf16 is the top half of an fp32).
_SCALAR = {"F64": ("<d", 8), "F32": ("<f", 4), "F16": ("<e", 2), "I64": ("<q", 8), "I32": ("<i", 4)}


@attrs.frozen(kw_only=True)
class LoraModule:
    name: (
        str  # kohya's module name, e.g. lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q
    )
    rank: int  # rows of lora_down
    alpha: float | None  # None: the file has no alpha (kohya then keeps the network's own)
    conv: bool  # a 3x3 (or larger) convolution: adapted at conv_rank / conv_alpha
    down: tuple[int, ...]  # tensor shapes
    up: tuple[int, ...]
    mid: tuple[int, ...] = ()  # LyCORIS LoCon's Tucker core (`lora_mid.weight`, rank x rank x k x k), if any


@attrs.frozen(kw_only=True)
class LoraFile:
    path: str
    modules: dict[str, LoraModule]

    def component_prefixes(self) -> set[str]:
        return {next(p for p in KOHYA_PREFIXES if m.startswith(p)) for m in self.modules}


def read_lora_file(
    path: str | os.PathLike, dora_scale: bool = False, lora_mid: bool = False, norms: bool = False
) -> LoraFile:
    """The modules of a kohya-layout LoRA file; ModelFileError when it is not one (naming the first tensor
    that does not fit). `dora_scale`: LyCORIS's LoCon with weight_decompose, its modules' `.dora_scale`
    tensors allowed (and not read here). `lora_mid`: LyCORIS LoCon's Tucker form, a module's
    `.lora_mid.weight` (its shape in LoraModule.mid; the module is a k x k convolution). `norms`: LyCORIS's
    NormModules (train_norm) beside the LoRA modules, their `.w_norm` / `.b_norm` tensors skipped (not read
    here)."""
    path = Path(path)
    raw = read_raw_weights(path)
    header = raw.header
    names = sorted(
        n
        for n in header
        if not (dora_scale and n.endswith(".dora_scale"))
        and not (lora_mid and n.endswith(_MID))
        and not (norms and n.endswith((".w_norm", ".b_norm")))
    )
    for name in names:
        base = _module_of(name)
        if base is None or not base.startswith(KOHYA_PREFIXES):
            raise ModelFileError(
                path,
                f"tensor `{name}` is not in kohya's LoRA layout (`lora_unet_*` / `lora_te*_*` modules with "
                "`.lora_down.weight`, `.lora_up.weight`, `.alpha`); LyCORIS (LoHa, LoKr, LoCon with "
                "`dora_scale`) and diffusers-format files cannot start a LoRA run",
            )
    modules: dict[str, LoraModule] = {}
    for base in sorted({_module_of(n) for n in names}):  # type: ignore[type-var]
        down, up = header.get(base + _DOWN), header.get(base + _UP)
        if down is None or up is None:
            missing = _DOWN if down is None else _UP
            raise ModelFileError(path, f"module `{base}` has no `{base}{missing}`")
        down_shape, up_shape = tuple(down["shape"]), tuple(up["shape"])
        if len(down_shape) not in (2, 4) or up_shape[1:2] != down_shape[:1]:
            raise ModelFileError(
                path, f"`{base}`: lora_down {list(down_shape)} and lora_up {list(up_shape)} do not chain"
            )
        alpha = header.get(base + _ALPHA)
        mid = tuple(header[base + _MID]["shape"]) if lora_mid and base + _MID in header else ()
        # (a core beside a Linear's 2-D lora_down is left to the callers: LyCORIS builds none there)
        if (
            mid
            and len(down_shape) == 4
            and (len(mid) != 4 or mid[:2] != (down_shape[0], down_shape[0]) or down_shape[2:] != (1, 1))
        ):
            raise ModelFileError(
                path,
                f"`{base}`: lora_down {list(down_shape)} and lora_mid {list(mid)} do not chain (LoCon's "
                "Tucker form: a rank x rank x k x k core between 1x1 convolutions)",
            )
        modules[base] = LoraModule(
            name=base,
            rank=down_shape[0],
            alpha=None if alpha is None else _scalar(path, base + _ALPHA, alpha, raw),
            conv=len(down_shape) == 4 and math.prod((mid or down_shape)[2:]) > 1,
            down=down_shape,
            up=up_shape,
            mid=mid,
        )
    orphan = sorted(n for n in header if lora_mid and n.endswith(_MID) and n[: -len(_MID)] not in modules)
    if orphan:
        raise ModelFileError(path, f"tensor `{orphan[0]}` belongs to no module with lora_down / lora_up")
    if not modules:
        raise ModelFileError(path, "holds no LoRA module")
    return LoraFile(path=str(path), modules=modules)


def _module_of(name: str) -> str | None:
    for suffix in (_DOWN, _UP, _ALPHA):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _scalar(path: Path, name: str, entry: dict, weights: RawWeights) -> float:
    """The value of a one-number tensor, read from its bytes."""
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if math.prod(shape or ()) != 1 or (dtype not in _SCALAR and dtype != "BF16"):
        raise ModelFileError(path, f"`{name}` is not one number ({dtype} {shape})")
    raw = weights.tensor_bytes(name)
    if dtype == "BF16":
        return struct.unpack("<f", b"\x00\x00" + raw[:2])[0]
    fmt, size = _SCALAR[dtype]
    if len(raw) < size:
        raise ModelFileError(path, f"`{name}` is truncated")
    return float(struct.unpack(fmt, raw[:size])[0])


def kohya_suffix(target: str) -> str:
    """A dbspec target suffix (`to_out.0`) as the tail of kohya's flattened module name (`_to_out_0`)."""
    return "_" + target.replace(".", "_")


def ranks_and_alphas(file: LoraFile) -> tuple[set[tuple[int, float | None]], set[tuple[int, float | None]]]:
    """(rank, alpha) pairs of the file's linear (and 1x1) modules and of its larger convolutions."""
    linear = {(m.rank, m.alpha) for m in file.modules.values() if not m.conv}
    conv = {(m.rank, m.alpha) for m in file.modules.values() if m.conv}
    return linear, conv


# kohya's SDXL LoRA names follow the original UNet layout: the ResNet, downsampler and upsampler layers end in
# other words than the diffusers names dbspec's targets use (attention layers end alike).
_ORIGINAL_TAILS = (
    (re.compile(r"_in_layers_2$"), "_conv1"),
    (re.compile(r"_out_layers_3$"), "_conv2"),
    (re.compile(r"_emb_layers_1$"), "_time_emb_proj"),
    (re.compile(r"_skip_connection$"), "_conv_shortcut"),
    (re.compile(r"^(lora_unet_input_blocks_\d+_0)_op$"), r"\1_downsamplers_0_conv"),
    (re.compile(r"^(lora_unet_output_blocks_\d+_\d+)_conv$"), r"\1_upsamplers_0_conv"),
)


def diffusers_tail(name: str) -> str:
    """A kohya original-layout module name with its last words as diffusers names them (for target checks)."""
    for pattern, tail in _ORIGINAL_TAILS:
        if pattern.search(name):
            return pattern.sub(tail, name)
    return name
