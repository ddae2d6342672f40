"""kohya's dropouts on a fused Linear, drawn once for all its parts (`plan.adapter.fused` with `down_dropout`,
`rank_dropout` or `module_dropout`; `plan.adapter.split_fused`, kohya's split_qkv, below).

kohya's LoRAModule on a fused Linear (networks.lora_flux / lora_sd3 without split_qkv, Flux's `img_attn.qkv`)
draws, per forward while training: `torch.rand(1) < module_dropout` (the whole layer's update skipped),
torch's dropout on the down-projection's output (`network_dropout`), then the rank mask
`torch.rand((batch, rank)) > rank_dropout`, and scales by 1 / (1 - rank_dropout). With the parts' downs tied
(runtime/fused.py) every part computes the same down output, so the parts of one fused layer share one draw:
the first part called in a forward draws exactly what kohya's module draws, in its order from torch's global
generator (the dropout mask as torch's dropout makes it for a tensor of the down output's shape and dtype),
and the layer's other parts apply the same masks (or skip together). The draw is kept until every adapted part
of the layer has run, so gradient checkpointing's recomputation (the generator restored) draws it again alike,
and a resumed run (the generator restored from the checkpoint) draws what an uninterrupted one draws. Outside
training the parts run peft's forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.fused import fused_layers


class FusedDraw:
    """One fused layer's dropout draw, shared by its `parts` adapted parts for one forward."""

    def __init__(self, parts: int, rows: int = 0, form: str = "kohya"):
        self.parts = parts
        self.form = form  # rank_dropout_form: "lycoris" over the output rows, "lycoris_bypass" the ranks
        self.rows = rows  # the fused layer's output rows (LoConModule's row mask, its bypass dropout)
        self.left = 0  # parts still to apply the current draw
        self.skip = False
        self.down: torch.Tensor | None = None  # network dropout's scaled mask (1 / (1 - p) where kept)
        self.rank: torch.Tensor | None = None  # rank dropout's mask (batch, rank)
        self.output: torch.Tensor | None = None  # LyCORIS's bypass dropout's scaled mask over all `rows`

    def take(
        self,
        lx_shape_of,
        module_dropout: float,
        down_dropout: float,
        rank_dropout: float,
        rank: int,
        output_dropout: float = 0.0,
    ):
        """The current draw, drawn first when no part has one left (`lx_shape_of()`: the down output)."""
        if self.left == 0:
            self.skip = bool(module_dropout) and bool(torch.rand(1) < module_dropout)
            self.down = self.rank = self.output = None
            if not self.skip:
                lx = lx_shape_of()
                if down_dropout:
                    self.down = torch.nn.functional.dropout(torch.ones_like(lx), p=down_dropout)
                if rank_dropout and self.form == "lycoris_bypass":  # bypass_forward_diff: the down's ranks
                    self.rank = torch.rand(rank, device=lx.device) > rank_dropout
                elif rank_dropout and self.form == "lycoris":  # LyCORIS LoCon: the fused update's output rows
                    self.rank = torch.rand(self.rows, device=lx.device) > rank_dropout
                elif rank_dropout:
                    self.rank = torch.rand((lx.size(0), rank), device=lx.device) > rank_dropout
                if output_dropout:  # LoConModule.bypass_forward_diff's self.dropout on the fused output
                    ones = lx.new_ones((*lx.shape[:-1], self.rows))
                    self.output = torch.nn.functional.dropout(ones, p=output_dropout)
            self.left = self.parts
        self.left -= 1
        return self


def add_fused_dropout(
    module: torch.nn.Module,
    fused: tuple[FusedPlan, ...],
    rank_dropout: float,
    module_dropout: float,
    multiplier: float = 1.0,
    down_dropout: float = 0.0,
    form: str = "kohya",
    output_dropout: float = 0.0,
) -> int:
    """Wrap the forward of the tied parts of every fused layer in `module` with one shared draw per layer
    and forward; marks them so runtime/lora_dropout.py leaves them alone. Returns the fused layers wrapped.
    `form` "lycoris" (kohya's lycoris.kohya LoCon on kohya's Flux: LoConModule.make_weight): the rank
    dropout is one `torch.rand(rows)` over the whole fused layer's output rows (every part's, adapted or
    not), each part keeping its rows' mask, unscaled; "lycoris_bypass" (its bypass_forward_diff): one
    `torch.rand(rank)` over the shared down's output, unscaled. `output_dropout` (the bypass forward's
    `dropout`): torch's dropout over the whole fused output (every row, as LoConModule's output), drawn
    last, each part multiplying its update (x scale) by its rows of the mask."""
    from dbspec.runtime.fused_lycoris_dropout import add_fused_locon_dora_dropout
    from dbspec.runtime.lycoris_dora import dora_scale_of

    # LyCORIS's weight decomposition on the parts: LoConModule's draws around it
    # (add_fused_locon_dora_dropout; the compiler keeps the other dropouts, the multiplier and other
    # rank-dropout forms off it, DBS267)
    rank = rank_dropout if form == "lycoris" else 0.0
    wrapped = add_fused_locon_dora_dropout(module, fused, module_dropout, rank)
    for group, found in fused_layers(module, fused):
        layers = [  # DoRA: peft's own; LyCORIS's: wrapped above
            layer
            for _, layer in found
            if not layer.use_dora.get(ADAPTER_NAME) and dora_scale_of(layer, ADAPTER_NAME) is None
        ]
        first = layers[0].lora_A[ADAPTER_NAME].weight if layers else None
        shared = [layer for layer in layers if layer.lora_A[ADAPTER_NAME].weight is first]
        if len(shared) < 2:
            continue
        offsets = _row_offsets(module, group, shared[0]) if form == "lycoris" or output_dropout else {}
        draw = FusedDraw(len(shared), offsets.pop("", 0), form)
        for index, layer in [(i, layer) for i, layer in found if layer in shared]:
            rank = layer.r[ADAPTER_NAME]
            masks = _shared_masks(draw, module_dropout, down_dropout, rank_dropout, rank, output_dropout)
            rows = offsets.get(group.parts[index])
            layer.forward = _forward(layer, layer.forward, masks, rank_dropout, multiplier, rows, form)
            layer.dbspec_fused_draw = draw
        wrapped += 1
    return wrapped


def _row_offsets(module: torch.nn.Module, group: FusedPlan, layer) -> dict[str, Any]:
    """The fused layer's parts' (start, stop) output rows in the original layer's order, and its row count
    under "", from the block holding `layer` (unadapted parts count: LyCORIS draws over every row)."""
    block = next(b for b in module.get_submodule(group.blocks) if any(m is layer for m in b.modules()))
    offsets: dict[str, Any] = {}
    start = 0
    for part in group.parts:
        width = int(block.get_submodule(part).out_features)
        offsets[part] = (start, start + width)
        start += width
    offsets[""] = start
    return offsets


# A part's draw for one forward (skip, .down, .rank, .output masks or None); `down()` is its down output.
Masks = Callable[[Callable[[], torch.Tensor]], "FusedDraw | PartDraw"]


def _shared_masks(
    draw: FusedDraw, module_dropout, down_dropout, rank_dropout, rank: int, output=0.0
) -> Masks:
    def masks(down):
        return draw.take(down, module_dropout, down_dropout, rank_dropout, rank, output)

    return masks


def _forward(
    layer, peft_forward, masks: Masks, rank_dropout: float, multiplier: float, rows=None, form="kohya"
):
    """The part's LoRA forward with the masks its layer's draw gives it while training; peft's otherwise.
    `rows`: the part's (start, stop) rows of the fused layer (a LyCORIS row mask, rank_dropout_form
    "lycoris", or the bypass output dropout's); "lycoris_bypass": LoConModule's bypass rank mask over the
    shared down's output, unscaled."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if layer.disable_adapters or layer.merged or kwargs.get("adapter_names"):
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        lora_a, lora_b = layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]
        scale = layer.scaling[ADAPTER_NAME] * multiplier
        lx = None

        def down() -> torch.Tensor:
            nonlocal lx
            if lx is None:
                lx = lora_a(layer.lora_dropout[ADAPTER_NAME](x.to(lora_a.weight.dtype)))
            return lx

        if not layer.training:
            return (result + lora_b(down()) * scale).to(result.dtype)
        draw = masks(down)
        if draw.skip:
            return result
        out = down()
        if draw.down is not None:
            out = out * draw.down
        rank_mask = draw.rank
        # LoConModule's masks are unscaled, but with a block's own rank_dropout_scale (a LyCORIS map entry's,
        # over the whole fused layer: its parts share the block, compiler/fused.py) divided by their mean
        if rank_mask is not None and form == "lycoris_bypass":  # LoConModule's bypass forward: the ranks
            out = out * _rescaled(rank_mask.to(out.dtype), layer)
        elif rank_mask is not None and form == "lycoris":  # LoConModule: ΔW's output rows
            update = lora_b(out) * _rescaled(rank_mask.to(out.dtype), layer)[rows[0] : rows[1]]
            return (result + _output(update * scale, draw, rows)).to(result.dtype)
        elif rank_mask is not None:
            if out.dim() == 3:
                rank_mask = rank_mask.unsqueeze(1)
            elif out.dim() == 4:
                rank_mask = rank_mask.unsqueeze(-1).unsqueeze(-1)
            out = out * rank_mask
            scale = scale * (1.0 / (1.0 - rank_dropout))
        return (result + _output(lora_b(out) * scale, draw, rows)).to(result.dtype)

    return forward


def _rescaled(mask: torch.Tensor, layer) -> torch.Tensor:
    """The fused layer's whole LyCORIS mask divided by its mean where the part's block rescales it."""
    from dbspec.runtime.lora_dropout import rescaled

    return mask / mask.mean() if rescaled(layer) else mask


def _output(update: torch.Tensor, draw: FusedDraw, rows) -> torch.Tensor:
    """The part's rows of the layer's bypass output dropout (its scaled mask), when drawn."""
    return update if draw.output is None else update * draw.output[..., rows[0] : rows[1]]


# --- kohya's split_qkv: separate LoRAs on the parts, one draw per fused layer (adapter.fused_dropout) -------
# kohya's LoRAModule on a fused Linear with split_dims (networks/lora_flux.py with split_qkv) draws, per
# forward while training: `torch.rand(1) < module_dropout` (every part skipped together), then torch's dropout
# on each part's down output, in part order, then one rank mask `torch.rand((batch, rank))` per part, in part
# order (kohya's own split forward fails on that last step, its rank_dropout never runs: dbspec draws what
# its code means). The parts' down outputs all have the shape of the input's rows times the rank, so the first
# part called (diffusers may call Flux's proj_mlp before q, k, v) draws every part's masks in kohya's order,
# and each part applies its own.


class PartDraw(NamedTuple):
    """One part's masks of a SplitDraw, as `_forward` reads a draw (kohya's split forward has no output
    dropout)."""

    skip: bool
    down: torch.Tensor | None
    rank: torch.Tensor | None
    output: torch.Tensor | None = None


class SplitDraw:
    """One split fused layer's draw for one forward: the skip, and each part's masks by part index."""

    def __init__(self, parts: int, adapted: int):
        self.parts, self.adapted = parts, adapted  # kohya's split count; parts present here
        self.left = 0
        self.skip = False
        self.down: list[torch.Tensor] = []
        self.rank: list[torch.Tensor] = []

    def take(self, lx_of, module_dropout: float, down_dropout: float, rank_dropout: float, rank: int):
        """The current draw, drawn first when no part has one left (`lx_of()`: this part's down output)."""
        if self.left == 0:
            self.skip = bool(module_dropout) and bool(torch.rand(1) < module_dropout)
            self.down, self.rank = [], []
            if not self.skip:
                lx = lx_of()
                ones = torch.ones_like(lx)
                if down_dropout:
                    self.down = [torch.nn.functional.dropout(ones, p=down_dropout) for _ in range(self.parts)]
                if rank_dropout:
                    self.rank = [
                        torch.rand((lx.size(0), rank), device=lx.device) > rank_dropout
                        for _ in range(self.parts)
                    ]
            self.left = self.adapted
        self.left -= 1
        return self


def add_split_dropout(
    module: torch.nn.Module,
    split: tuple[FusedPlan, ...],
    rank_dropout: float,
    module_dropout: float,
    multiplier: float = 1.0,
    down_dropout: float = 0.0,
) -> int:
    """Wrap the forward of the separate adapted parts of every fused layer in `split` (plan.adapter
    .split_fused) with one draw per layer and forward, in kohya's split order; marks them so
    runtime/lora_dropout.py leaves them alone. Returns the fused layers wrapped."""
    wrapped = 0
    for group, found in fused_layers(module, split):
        layers = {index: layer for index, layer in found if not layer.use_dora.get(ADAPTER_NAME)}
        if not layers:  # DoRA: peft's own forward
            continue
        draw = SplitDraw(len(group.parts), len(layers))
        for index, layer in layers.items():
            rank = layer.r[ADAPTER_NAME]
            masks = _part_masks(draw, index, module_dropout, down_dropout, rank_dropout, rank)
            layer.forward = _forward(layer, layer.forward, masks, rank_dropout, multiplier)
            layer.dbspec_fused_draw = draw
        wrapped += 1
    return wrapped


def _part_masks(draw: SplitDraw, index: int, module_dropout, down_dropout, rank_dropout, rank: int) -> Masks:
    def masks(down):
        d = draw.take(down, module_dropout, down_dropout, rank_dropout, rank)
        return PartDraw(d.skip, d.down[index] if d.down else None, d.rank[index] if d.rank else None)

    return masks
