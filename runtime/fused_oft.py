"""LyCORIS's Diag-OFT on a fused Linear whose blocks span two parts (plan.adapter.fused: Flux's qkv and
linear1, SD3's qkv, at a block size that does not divide every part's width; FLUX.1's 3072-row parts at
lora_dim 9, 128 or 256, tiny-flux's 16-row parts at 6 or 7).

DiagOFTModule on the fused Linear splits its stacked rows into blocks of factorization(stacked width,
lora_dim) rows and rotates each block of the stacked weight's rows: a block over the end of one part and the
start of the next mixes rows of both. `tie_fused_oft` makes the parts of diffusers' split layer that one
module: one zero `oft_blocks` Parameter of every block of the stacked rows, shared by the parts (the first
part's: the optimizer, resume state and EMA hold it once, the kohya_lora export writes it once), the
constraint x the stacked width over its one norm. Each part computes its own rows of the rotated stacked
weight: the blocks its rows touch (`OftTie.window`) over those rows of the stacked weight (its own and its
neighbours', `OftTie.rows`), then its own rows of the per-row rescale; in bypass mode the same over the
stacked output (each neighbour's base output, where a block reaches into it). rank_dropout's one mask over
every block per forward (runtime/lycoris_oft.py FusedRankDraw) and module_dropout's one draw are the parts'
as for parts that do not span (runtime/fused.py FusedSkip)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class OftTie:
    """The parts of one fused Linear (their DiagOftLayers in row order) sharing one DiagOFTModule's blocks
    of `size` rows over their stacked rows. Not a module: no state of its own."""

    def __init__(self, parts: list, size: int):
        self.parts, self.size = tuple(parts), size
        self.widths = [int(p.get_base_layer().weight.shape[0]) for p in parts]
        self.starts = [sum(self.widths[:i]) for i in range(len(parts))]
        self.total = sum(self.widths)

    def _index(self, layer) -> int:
        return next(i for i, part in enumerate(self.parts) if part is layer)

    def window(self, layer) -> tuple[int, int, int, int]:
        """(first block, end block, offset, width): the blocks `layer`'s rows touch, and where its rows lie
        in those blocks' rows."""
        i = self._index(layer)
        start, width = self.starts[i], self.widths[i]
        first, end = start // self.size, -(-(start + width) // self.size)
        return first, end, start - first * self.size, width

    def rows(self, layer, own: torch.Tensor, piece: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        """The rows (dimension 0) of the stacked tensor under `layer`'s window: `own` for its own rows,
        `piece(part)` for a neighbour's (called only for the parts a block of the window reaches)."""
        first, end, _, _ = self.window(layer)
        low, high = first * self.size, end * self.size
        chunks = []
        for part, start, width in zip(self.parts, self.starts, self.widths):
            a, b = max(low, start), min(high, start + width)
            if a < b:
                rows = own if part is layer else piece(part).to(own.dtype)
                chunks.append(rows[a - start : b - start])
        return torch.cat(chunks)


def tie_fused_oft(layers: list, size: int, adapter: str, where: str) -> None:
    """One zero `oft_blocks` Parameter of blocks of `size` over the stacked rows of `layers` (a fused Linear's
    parts in row order), shared by them, each knowing the tie (OftTie) and its constraint the fused module's
    (constraint x the stacked width). ValueError when the parts differ in lora_dim, constraint or forward
    (LyCORIS's one module has one of each)."""
    first = layers[0]
    if len({(layer.r[adapter], float(layer.lora_alpha[adapter])) for layer in layers}) > 1:
        raise ValueError(f"{where}: its parts have other block sizes or constraints (one Diag-OFT module)")
    if len({layer.oft_bypass for layer in layers}) > 1:
        raise ValueError(f"{where}: its parts are in other forwards (bypass_mode: one Diag-OFT module)")
    tie = OftTie(layers, size)
    old = first.lora_oft_blocks[adapter]
    blocks = torch.zeros(tie.total // size, size, size, dtype=old.dtype, device=old.device)
    share(layers, nn.Parameter(blocks, requires_grad=old.requires_grad), tie, adapter)


def share(layers: list, blocks: nn.Parameter, tie: OftTie, adapter: str) -> None:
    for layer in layers:
        layer.lora_oft_blocks[adapter] = blocks
        layer.oft_block_size = tie.size
        layer.constraint[adapter] = float(layer.lora_alpha[adapter]) * tie.total  # the fused module's
        layer.__dict__["oft_tie"] = tie  # not a submodule: no state, no second registration


def spans(layers: list, adapter: str) -> int:
    """The block size of saved blocks the parts (`layers`, a fused Linear's, in row order) share: every part
    holds the blocks of the stacked rows (a saved run whose blocks spanned them, loaded back part by part);
    0 when they hold their own rows' blocks."""
    shapes = {tuple(layer.lora_oft_blocks[adapter].shape) for layer in layers}
    total = sum(int(layer.get_base_layer().weight.shape[0]) for layer in layers)
    if len(layers) < 2 or len(shapes) != 1:
        return 0
    count, size, _ = next(iter(shapes))
    return size if count * size == total else 0
