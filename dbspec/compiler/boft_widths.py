"""LyCORIS BOFT's block split checked at plan time (`adapter.kind = "boft"`): LyCORIS's power2factorization
splits a layer of w output rows into w / b blocks of b rows, b even and at most the block size, w / b a power
of two; a width with no such split is refused (LyCORIS raises too, and dbspec's runtime when it builds the
layer). Here the widths come from the base model's safetensors headers (torch-free): every targeted module's
`.weight` of a diffusers-layout model on this machine (a local folder or the hub cache), denoiser and text
encoders. Other bases (built-in models, single files, hub models not downloaded yet, per-component weight
files) have no header to read here: their layers are checked when the adapter is built, with the same message
naming the layer."""

from __future__ import annotations

import re
from pathlib import Path

from dbspec.compiler.modelinfo import _component_weights
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.util.targets import targeted
from dbspec.families import family_spec
from dbspec.plan.boft import power2_factorization

KEY = ("adapter", "block_size")


def unsplittable_layers(
    tensors: list[tuple[str, object]],
    targets: tuple[str, ...],
    conv_targets: tuple[str, ...],
    block: int,
    blocks: tuple = (),
    prefix: str = "",
    fused: tuple = (),
    mixed: bool = False,
) -> list[tuple[str, int]]:
    """(module path, output width) of each targeted Linear (2-D weight) or Conv2d (4-D: `conv_targets`)
    whose width LyCORIS's power2factorization cannot split with `block`, or with the block size of the first
    of `blocks` (the plan's per-module blocks, their rank the block size) whose pattern `re.search`es
    `prefix` + its path (runtime/blocks.py's rule: a text encoder's blocks search `<component>.<path>`).
    `fused`: the plan's fused layers (adapter.fused_projections), each split as one module over its parts'
    stacked rows (runtime/lycoris_boft.py tie_fused_boft), named `<blocks>.<index>.<kohya name>`.
    `mixed`: a run of several kinds (another kind's adapter): only the layers whose first block is of kind
    "boft" are BOFT's, split by that block's size (a fused layer's: its parts' block, the stacked rows)."""
    found = []
    stacked: dict[str, tuple[int, int]] = {}  # a fused layer's path -> (its parts' rows, block size)
    for name, info in tensors:
        if not name.endswith(".weight"):
            continue
        path, shape = name.removesuffix(".weight"), tuple(info.shape)
        names = targets if len(shape) == 2 else conv_targets if len(shape) == 4 else ()
        if not names or not targeted(path, names):
            continue
        own = next((b for b in blocks if re.search(b.pattern, prefix + path)), None)
        if mixed and (own is None or own.kind != "boft"):
            continue
        whole = _fused_path(path, fused)
        if whole:
            size = own.rank if mixed else block  # the whole-network BOFT's fused layers take no block
            stacked[whole] = (stacked.get(whole, (0, size))[0] + shape[0], size)
            continue
        size = block if own is None else own.rank
        if not power2_factorization(shape[0], size)[1]:
            found.append((path, shape[0]))
    return found + [
        (path, rows) for path, (rows, size) in stacked.items() if not power2_factorization(rows, size)[1]
    ]


def has_boft(adapter) -> bool:
    """BOFT layers in the run: a BOFT adapter, or another kind's with blocks of kind "boft"."""
    blocks = (
        *(getattr(adapter, "blocks", None) or ()),
        *(getattr(adapter, "text_encoder_blocks", None) or ()),
    )
    return adapter.kind == "boft" or any(getattr(b, "kind", "") == "boft" for b in blocks)


def _fused_path(path: str, fused: tuple) -> str:
    """`<blocks>.<index>.<kohya name>` when `path` is a part of one of the `fused` layers, else ""."""
    for group in fused:
        for part in group.parts:
            head, dot, index = path.removesuffix("." + part).rpartition(".")
            if path.endswith("." + part) and dot and head == group.blocks and index.isdigit():
                return f"{group.blocks}.{index}.{group.name}"
    return ""


def check_boft_widths(ctx, model, adapter) -> None:
    """Report (DBS390) the targeted layers of the base model BOFT cannot split; `adapter`: the plan's."""
    if not has_boft(adapter) or model is None or model.source not in ("diffusers", "hub") or not model.path:
        return
    mixed = adapter.kind != "boft"  # a run of several kinds: its boft blocks' layers
    family = family_spec(model.family)
    if getattr(model, "denoiser_file", ""):  # per-component files: their layers are checked when built
        return
    parts = [
        (family.denoiser, adapter.denoiser_targets, adapter.conv_targets, adapter.blocks, "", adapter.fused)
    ]
    if adapter.text_encoder_targets and not any(getattr(model, "text_encoder_files", ()) or ()):
        parts += [
            (
                name,
                adapter.text_encoder_2_targets if name == "text_encoder_2" else adapter.text_encoder_targets,
                (),
                adapter.text_encoder_blocks,
                f"{name}.",
                (),
            )
            for name in family.text_encoder_names
        ]
    bad: list[tuple[str, str, int]] = []
    for component, targets, convs, blocks, prefix, fused in parts:
        try:
            weights = _component_weights(Path(model.path) / component)
        except (ModelFileError, OSError):  # the model's own checks report unreadable files
            continue
        if weights is None or weights.tensors is None:
            continue
        block = adapter.oft_block_size
        found = unsplittable_layers(weights.tensors, targets, convs, block, blocks, prefix, fused, mixed)
        bad += [(component, p, w) for p, w in found]
    if not bad:
        return
    widths = sorted({w for _, _, w in bad})
    shown = ", ".join(f"{c}.{p} ({w} rows)" for c, p, w in bad[:4]) + (
        f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    )
    fits = _block_sizes(widths)
    own = " (or their [[adapter.blocks]]' own)" if adapter.blocks or adapter.text_encoder_blocks else ""
    size = f"block_size {adapter.oft_block_size}{own}"
    if mixed:  # the boft blocks' sizes (their rank)
        size = "their kind = \"boft\" [[adapter.blocks]]' block sizes (the blocks' rank)"
    where = "the boft blocks' rank" if mixed else "adapter.block_size"
    ctx.report(
        "DBS390",
        "error",
        f"LyCORIS's BOFT cannot split {len(bad)} targeted layer(s) of this model with {size}: {shown}. "
        "Its power2factorization needs an even block size b <= block_size with width / b a power of two "
        "(LyCORIS raises on these layers too)",
        ("adapter", "blocks") if mixed else KEY,
        help=(
            f"set {where} to {fits} (the smallest that splits every such width)"
            if fits
            else "leave these layers out of the targets"
        ),
    )


def _block_sizes(widths: list[int]) -> int:
    """The smallest block size that splits every width, 0 when none up to the largest width does."""
    for block in range(2, max(widths) + 1, 2):
        if all(power2_factorization(w, block)[1] for w in widths):
            return block
    return 0
