"""Dropout masks over the output rows of a Linear that kohya's model holds with its halves of rows the other
way round (diffusers' AdaLayerNormContinuous reads (scale, shift) where kohya's SD3 / Flux read (shift,
scale): SD3's last context modulation and both families' final modulation, runtime/sd3_kohya.py swapped).

LyCORIS's module on kohya's layer draws its row mask (LoConModule.make_weight's, LohaModule.get_weight's
`torch.rand(out)`), its bypass forward's Dropout over the update (`out` last; GLoRAModule's of bx) and
DiagOFTModule's rank dropout over its blocks in kohya's row order: row j of the draw belongs to kohya's row
j, which is diffusers' row (j + out / 2) mod out. So the layer's draw, made as LyCORIS makes it, is rolled by
half its rows (blocks) before it meets diffusers' rows (the update rolled into kohya's order for the Dropout,
then back), each row getting kohya's mask for that row. A Diag-OFT layer split into an odd number of blocks
(one over the end of one half and the start of the other) rotates kohya's rows themselves, its blocks and
their mask in kohya's order (lycoris_oft.py DiagOftLayer._kohya_order). A layer is
marked (`SWAPPED`) by mark_swapped_rows when the denoiser is prepared (runtime/prepare.py); FullModule's,
TLoraModule's and ButterflyOFTModule's layers keep their own flags (lycoris_full.py, lycoris_tlora.py,
lycoris_boft.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SWAPPED = "dbspec_kohya_rows_swapped"


def mark_swapped_rows(module: torch.nn.Module, swapped) -> int:
    """Mark each adapter layer (peft's wrapper: it has a `base_layer`) of `module` at a path `swapped(path)`
    names (runtime/prepare.py swapped_rows); how many."""
    count = 0
    for path, layer in module.named_modules():
        if hasattr(layer, "base_layer") and swapped(path):
            setattr(layer, SWAPPED, True)
            count += 1
    return count


def in_kohya_rows(mask: torch.Tensor, layer, dim: int = 0) -> torch.Tensor:
    """`mask`, drawn over kohya's rows of `layer` along `dim`, on diffusers' rows (unchanged where the
    layer's rows are in the same order)."""
    if not getattr(layer, SWAPPED, False):
        return mask
    return mask.roll(mask.shape[dim] // 2, dims=dim)


def dropped_in_kohya_rows(update: torch.Tensor, p: float, layer) -> torch.Tensor:
    """torch's dropout of `update` (rows last) as LyCORIS's Dropout draws it over kohya's row order."""
    if not getattr(layer, SWAPPED, False):
        return F.dropout(update, p=p)
    half = update.shape[-1] // 2
    return F.dropout(update.roll(half, dims=-1), p=p).roll(half, dims=-1)
