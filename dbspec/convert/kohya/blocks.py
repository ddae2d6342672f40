"""kohya networks.lora's per-block network_args into [[adapter.blocks]]: `block_dims`, `block_alphas`,
`conv_block_dims`, `conv_block_alphas` (per-block ranks) and `down_lr_weight`, `mid_lr_weight`,
`up_lr_weight`, `block_lr_zero_threshold` (per-block learning rates), as networks/lora.py reads them.

kohya numbers the U-Net's blocks with `get_block_index`: for SD1/SD2 (diffusers module names) 25 blocks,
`down_blocks.i.(resnets|attentions).j` -> 1 + 3i + j, `down_blocks.i.downsamplers` -> 1 + 3i + 2,
`mid_block` -> 12, the same for up blocks from 13 (an up block's upsampler shares the index of its third
layer); for SDXL (original module names) 23 blocks, `input_blocks.N` -> 1 + N, `middle_block.N` -> 10 + N,
`output_blocks.N` -> 13 + N. Each index becomes a pattern over the diffusers module paths dbspec adapts; an
index no LoRA module has (SD 0; SDXL 0, 1, 22: embeddings, conv_in, out) becomes none."""

from __future__ import annotations

import math
import re

SD_BLOCKS, SD_SIDE = 25, 12
SDXL_BLOCKS, SDXL_SIDE, SDXL_MID = 23, 9, 3


def block_pattern(index: int, original_names: bool) -> str | None:
    """The diffusers-path regex of kohya block `index`, or None when no LoRA module has that index."""
    if not original_names:
        if 1 <= index <= 11:
            return _side("down", index - 1)
        if index == 12:
            return r"^mid_block\."
        if 13 <= index <= 24:
            return _side("up", index - 13)
        return None
    if 2 <= index <= 9:  # input_blocks.1..8 (input_blocks.0 is conv_in)
        return _side("down", index - 2)
    if 10 <= index <= 12:
        return (r"^mid_block\.resnets\.0\.", r"^mid_block\.attentions\.0\.", r"^mid_block\.resnets\.1\.")[
            index - 10
        ]
    if 13 <= index <= 21:
        return _side("up", index - 13)
    return None


def _side(side: str, k: int) -> str:
    i, j = divmod(k, 3)
    if j < 2:
        return rf"^{side}_blocks\.{i}\.(resnets|attentions)\.{j}\."
    if side == "down":
        return rf"^down_blocks\.{i}\.downsamplers\."
    return rf"^up_blocks\.{i}\.((resnets|attentions)\.2|upsamplers\.\d+)\."


def block_lr_weights(kwargs: dict[str, str], original_names: bool) -> list[float] | None:
    """networks/lora.py parse_block_lr_kwargs + get_block_lr_weight: one learning-rate weight per block
    index, or None without down/mid/up_lr_weight. ValueError for a preset kohya does not know."""
    down, mid, up = (kwargs.pop(k, None) for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"))
    threshold = float(kwargs.pop("block_lr_zero_threshold", "0.0") or 0.0)
    if down is None and mid is None and up is None:
        return None
    side, middle = (SDXL_SIDE, SDXL_MID) if original_names else (SD_SIDE, 1)
    down_w = _weights(down, side) if down is not None else None
    up_w = _weights(up, side) if up is not None else None
    mid_w = [float(s) if s else 0.0 for s in mid.split(",")] if mid is not None else None

    def fit(w: list[float] | None, n: int) -> list[float]:
        if w is None:
            return [1.0] * n
        w = (w + [1.0] * n)[:n]  # kohya cuts a long list and fills a short one with 1
        return [x if x > threshold else 0.0 for x in w]

    weights = fit(down_w, side) + fit(mid_w, middle) + fit(up_w, side)
    return [1.0, *weights, 1.0] if original_names else weights


def _weights(text: str, n: int) -> list[float]:
    """A comma list (empty items 0), or a preset `name[+base]`. kohya reads anything else without a comma
    (one number too) as a preset name, and its message for an unknown one fails to format: it crashes."""
    if "," in text:
        return [float(s) if s else 0.0 for s in text.split(",")]
    name, _, base = text.partition("+")
    add = float(base) if base else 0.0
    ramp = [i / (n - 1) for i in range(n)]
    presets = {
        "cosine": [math.sin(math.pi * (i / (n - 1)) / 2) + add for i in reversed(range(n))],
        "sine": [math.sin(math.pi * x / 2) + add for x in ramp],
        "linear": [x + add for x in ramp],
        "reverse_linear": [x + add for x in reversed(ramp)],
        "zeros": [add] * n,
    }
    if name not in presets:
        raise ValueError(
            f"`{text}` is no lr-weight preset (cosine, sine, linear, reverse_linear, zeros, each with an "
            "optional +N); kohya crashes on it (a list needs commas)"
        )
    return presets[name]


def kohya_conv(kwargs: dict[str, str]) -> tuple[int | None, float | str | None]:
    """networks/lora.py (and lora_fa.py) create_network's `conv_dim` / `conv_alpha`, popped from `kwargs`.
    kohya reads conv_dim with kwargs.get(..., None): any value given, 0 too, turns its ResNet / Down- /
    Upsample scan on (their Linear and 1x1 layers train at network_dim; conv_dim 0 only skips the 3x3
    convolutions). It parses a given conv_dim with int() and then conv_alpha with float(), 1.0 without one;
    ValueError where those stop kohya (an empty value, `4.0`). Without conv_dim, conv_alpha stays the string
    given (None without one): get_block_dims_and_alphas may hand it on unparsed (kohya_blocks)."""
    conv_dim, conv_alpha = kwargs.pop("conv_dim", None), kwargs.pop("conv_alpha", None)
    if conv_dim is None:
        return None, conv_alpha
    try:
        return int(conv_dim), 1.0 if conv_alpha is None else float(conv_alpha)
    except ValueError as exc:
        raise ValueError(
            f"kohya parses conv_dim with int() and conv_alpha with float(), which stop it ({exc}); give an "
            "integer conv_dim (0 adapts the ResNets' Linear and 1x1 layers only) and a number conv_alpha"
        ) from None


def string_conv_alpha(conv_alpha: float | str | None, conv_dims: list[int]) -> None:
    """conv_block_dims without conv_dim and conv_block_alphas: get_block_dims_and_alphas gives each block
    conv_alpha unparsed, and LoRAModule's `alpha / lora_dim` on that string stops kohya (TypeError) as soon as
    a block's convolutions build (a conv rank above 0)."""
    if isinstance(conv_alpha, str) and any(conv_dims):
        raise ValueError(
            f"conv_alpha `{conv_alpha}` with conv_block_dims but no conv_dim: kohya hands the string on "
            "unparsed and its LoRAModule's alpha / dim stops on it (TypeError); give conv_dim, or "
            "conv_block_alphas"
        )


def kohya_blocks(
    kwargs: dict[str, str],
    original_names: bool,
    dim: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | str | None,
) -> tuple[list[dict], int | None, float | None] | None:
    """networks/lora.py create_network's block settings: ([[adapter.blocks]] entries, the adapter's conv rank
    and alpha when conv_block_dims turns convolutions on), or None without block settings. `conv_dim` /
    `conv_alpha` as kohya_conv reads them. ValueError (kohya asserts or stops) for a list of the wrong
    length, a string conv_alpha a built convolution takes (string_conv_alpha)."""
    lr = block_lr_weights(kwargs, original_names)
    dims_text = kwargs.pop("block_dims", None)
    alphas_text = kwargs.pop("block_alphas", None)
    conv_dims_text = kwargs.pop("conv_block_dims", None)
    conv_alphas_text = kwargs.pop("conv_block_alphas", None)
    if dims_text is None and lr is None:
        return None  # kohya reads block_alphas / conv_block_* only with block_dims or block lr weights
    n = SDXL_BLOCKS if original_names else SD_BLOCKS
    dims = block_list(dims_text, int, n, "block_dims") if dims_text else [dim] * n
    alphas = block_list(alphas_text, float, n, "block_alphas") if alphas_text else [alpha] * n
    if conv_dims_text:
        conv_dims = block_list(conv_dims_text, int, n, "conv_block_dims")
        fallback = conv_alpha if isinstance(conv_alpha, float) else 1.0  # a string: string_conv_alpha
        conv_alphas = (
            block_list(conv_alphas_text, float, n, "conv_block_alphas")
            if conv_alphas_text
            else [fallback] * n
        )
    elif conv_dim is not None:
        conv_dims, conv_alphas = [conv_dim] * n, [conv_alpha] * n  # a float (kohya_conv), 0 too
    else:
        conv_dims, conv_alphas = [0] * n, [1.0] * n
    weights = lr or [1.0] * n
    for i, w in enumerate(weights):  # remove_block_dims_and_alphas: a block at lr 0 gets no LoRA
        if w == 0:
            dims[i] = 0
            conv_dims[i] = 0
    if conv_dims_text and not conv_alphas_text:
        string_conv_alpha(
            conv_alpha, [d for i, d in enumerate(conv_dims) if block_pattern(i, original_names)]
        )
    convs = conv_dim is not None or conv_dims_text is not None
    base_conv = conv_dim if conv_dim is not None else (max(conv_dims) if convs else 0)
    base_conv_alpha = conv_alpha if conv_dim is not None else 1.0
    blocks = []
    for i in range(n):
        pattern = block_pattern(i, original_names)
        if pattern is None:
            continue
        entry = {"rank": dims[i], "alpha": alphas[i], "lr_scale": weights[i] if weights[i] else 1.0}
        if convs:
            entry.update(conv_rank=conv_dims[i], conv_alpha=conv_alphas[i])
        same = (entry["rank"], entry["alpha"], entry["lr_scale"]) == (dim, alpha, 1.0) and (
            not convs or (entry["conv_rank"], entry["conv_alpha"]) == (base_conv, base_conv_alpha)
        )
        if not same:
            blocks.append({"pattern": pattern, **entry, "index": i})
    if conv_dims_text is not None and conv_dim is None:
        return blocks, base_conv, base_conv_alpha
    return blocks, None, None


def block_list(text: str, kind, n: int, key: str) -> list:
    """kohya's per-block list: `n` comma-separated values of `kind` (ValueError otherwise, kohya asserts)."""
    values = [kind(s) for s in text.split(",")]
    if len(values) != n:
        raise ValueError(f"{key} must have {n} values (kohya asserts), got {len(values)}")
    return values


_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def kohya_block_index(lora_name: str, sdxl: bool) -> int:
    """networks/lora.py get_block_index: the block of a kohya U-Net module name, -1 for none (whose weight
    get_lr_weight then reads from the list's end, as Python indexes it)."""
    if not sdxl:
        m = _UPDOWN.search(lora_name)
        if m:
            side, i, kind, j = m.groups()
            idx = 3 * int(i) + (2 if kind in ("upsamplers", "downsamplers") else int(j))
            return 1 + idx if side == "down" else 12 + 1 + idx
        return 12 if "mid_block_" in lora_name else -1
    name = lora_name.removeprefix("lora_unet_") if lora_name.startswith("lora_unet_") else None
    if name is None:
        return -1
    for start, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(start):
            return base + int(name.split("_")[2])
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    return 22 if name.startswith("out_") else -1
