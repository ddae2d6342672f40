"""LyCORIS's LoKr / LoHa dropouts on a fused Linear, drawn once for all its parts (`plan.adapter.fused` with
kind lokr / loha and `module_dropout`, `rank_dropout` or `output_dropout`: lycoris.kohya algo=lokr / loha
on kohya's Flux / SD3).

LokrModule and LohaModule (lycoris/modules/lokr.py, loha.py; rebuild forward) draw, per training forward of
the fused Linear: `torch.rand(1) < module_dropout` (only when module_dropout is set; the whole update
skipped), then, in get_weight, the row mask `torch.rand(out) > rank_dropout` over every output row of the
fused update, from torch's global CPU generator, the kept rows unscaled (rank_dropout_scale: divided by the
mask's mean; a block's own, a LyCORIS map entry's, on its fused layers). The parts of one fused layer share
that draw (runtime/fused_dropout.py's protocol): the first part called in a forward draws, the others apply
the same skip and their rows of the mask; the draw is kept
until every part has run, so gradient checkpointing's recomputation (the generator restored) draws it again
alike, and a resumed run draws what an uninterrupted one draws. Each part's update is its own rows of the
fused update (with use_scalar times the one scalar), masked, then applied to the input as peft's LoKr / LoHa
forward applies it; with the weight decomposition (dora_wd, per output row: runtime/lycoris_dora.py) the
part's masked rows of the update are decomposed with its rows' magnitudes, as LyCORIS's rebuild forward
decomposes W + mask x ΔW x scalar (a skipped forward is the base output alone). `output_dropout` is their
bypass forward's `dropout` (bypass_forward_diff: torch's Dropout of the fused update x scalar, after the
row mask; LoKr's bypass draws no row mask, so the converter leaves its rank_dropout out): one dropout mask
over the fused output's shape, drawn as torch's dropout draws it for the update's shape and dtype, each part
taking its columns of it; with it every other LoKr / LoHa layer (not fused, text encoders' too: LyCORIS's
bypass forward on each) gets a draw of its own in the same order (add_lycoris_layer_dropout). Outside
training the parts run peft's forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.fused import _lycoris_part, fused_parts
from dbspec.runtime.kohya_rows import in_kohya_rows
from dbspec.runtime.lycoris_dora import dora_scale_of


class LycorisDraw:
    """One fused LoKr's / LoHa's draw for one forward, shared by its `parts`."""

    def __init__(
        self,
        parts: int,
        rows: int,
        module_dropout: float,
        rank_dropout: float,
        scale: bool,
        output_dropout: float = 0.0,
    ):
        self.parts, self.rows = parts, rows
        self.module_dropout, self.rank_dropout, self.scale = module_dropout, rank_dropout, scale
        self.output_dropout = output_dropout
        self.conv = False  # a convolution of its own (add_lycoris_layer_dropout): its output's channels
        self.on_device = False  # the row mask on the input's device (LoConModule's), else the CPU's
        self.left = 0  # parts still to apply the current draw
        self.skip = False
        self.mask: torch.Tensor | None = None
        self.output: torch.Tensor | None = None  # the bypass dropout's scaled mask over the fused output

    def take(
        self, out: torch.Tensor, dtype: torch.dtype
    ) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
        """(skip, row mask or None, output mask or None) of the current forward, drawn when no part has one
        left. The output mask spans the whole layer's output: `out` is a part's (a Linear's rows last, a
        convolution's its own whole output), drawn in `dtype`, the input's (LyCORIS's update is in it)."""
        if self.left == 0:
            self.skip = bool(self.module_dropout) and bool(torch.rand(1) < self.module_dropout)
            self.mask = self.output = None
            if not self.skip and self.rank_dropout:
                device = out.device if self.on_device else None
                mask = (torch.rand(self.rows, device=device) > self.rank_dropout).float()
                self.mask = mask / mask.mean() if self.scale else mask
            if not self.skip and self.output_dropout:  # bypass_forward_diff's self.drop(update x scalar)
                shape = out.shape if self.conv else (*out.shape[:-1], self.rows)
                ones = torch.ones(shape, dtype=dtype, device=out.device)
                self.output = F.dropout(ones, p=self.output_dropout)
            self.left = self.parts
        self.left -= 1
        return self.skip, self.mask, self.output


def lokr_rows(adapter) -> bool:
    """Whether a LoKr / LoHa adapter's LoKr layers draw the rank-dropout row mask: a LoKr adapter's, unless in
    its bypass form (rank_dropout_form "lycoris_bypass": LokrModule's bypass forward never reads it, its
    LoCon / LoHa blocks drawing theirs); a LoHa adapter's LoKr blocks never (the same bypass forward)."""
    return adapter.kind == "lokr" and adapter.rank_dropout_form != "lycoris_bypass"


def add_fused_lycoris_dropout(
    module: torch.nn.Module,
    fused: tuple[FusedPlan, ...],
    module_dropout: float,
    rank_dropout: float,
    rank_dropout_scale: bool,
    output_dropout: float = 0.0,
    lokr_rows: bool = True,
) -> int:
    """Wrap the forward of every fused LoKr's / LoHa's parts in `module` with one shared draw per fused layer
    and forward; how many fused layers. `lokr_rows` False: the fused LoKr layers draw no row mask (a lora
    adapter's LoKr blocks in LyCORIS's bypass forward, add_lycoris_layer_dropout's rule)."""
    from peft.tuners.lokr import LoKrLayer

    wrapped = 0
    for _group, _index, found in fused_parts(module, fused, _lycoris_part):
        layers = [layer for _, _, layer in found]
        if not layers:
            continue
        start, rows = 0, {}
        for layer in layers:  # every part is adapted (DBS575): the fused layer's rows in part order
            width = int(layer.get_base_layer().out_features)
            rows[id(layer)] = (start, start + width)
            start += width
        # the fused layer's rescale: its block's own (a LyCORIS map entry's; one block covers every part,
        # compiler/fused.py), set on the parts' layers by runtime/blocks.py, else the adapter's
        scale = _own_rescale(layers[0], rank_dropout_scale)
        masked = rank_dropout if lokr_rows or not isinstance(layers[0], LoKrLayer) else 0.0
        draw = LycorisDraw(len(layers), start, module_dropout, masked, scale, output_dropout)
        for layer in layers:
            layer.forward = _forward(layer, layer.forward, draw, rows[id(layer)])
            layer.dbspec_lycoris_draw = draw
        wrapped += 1
    return wrapped


def add_lycoris_layer_dropout(
    module: torch.nn.Module,
    module_dropout: float,
    rank_dropout: float,
    rank_dropout_scale: bool,
    output_dropout: float,
    lokr_rows: bool = True,
) -> int:
    """With `output_dropout` (LyCORIS's bypass forward), or its bypass rank_dropout without one (then no
    output mask, as LyCORIS's nn.Identity `drop`; runtime/prepare.py): every LoKr / LoHa layer of `module` no
    fused draw
    wraps (a fused layer's other Linears, the text encoders') with a draw of its own, in LyCORIS's order
    (module_dropout, the row mask, the output's dropout), as LokrModule / LohaModule on that layer alone;
    how many layers. `lokr_rows` False: the LoKr layers draw no row mask (a lora adapter's LoKr blocks:
    LokrModule's bypass forward never reads rank_dropout, compiler rules.mixed_bypass_ranks)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    wrapped = 0
    for layer in list(module.modules()):
        if not isinstance(layer, LoHaLayer | LoKrLayer) or hasattr(layer, "dbspec_lycoris_draw"):
            continue
        if ADAPTER_NAME not in layer.scaling:
            continue
        base = layer.get_base_layer()
        conv = isinstance(base, torch.nn.Conv2d)
        rows = int(base.out_channels if conv else base.out_features)
        scale = _own_rescale(layer, rank_dropout_scale)  # its block's own, else the adapter's
        masked = rank_dropout if lokr_rows or not isinstance(layer, LoKrLayer) else 0.0
        draw = LycorisDraw(1, rows, module_dropout, masked, scale, output_dropout)
        draw.conv = conv
        layer.forward = _forward(layer, layer.forward, draw, (0, rows))
        layer.dbspec_lycoris_draw = draw
        wrapped += 1
    return wrapped


def add_fused_locon_dora_dropout(
    module: torch.nn.Module, fused: tuple[FusedPlan, ...], module_dropout: float, rank_dropout: float
) -> int:
    """LoConModule with weight_decompose (dora_wd) on a fused Linear: its forward's one
    `torch.rand(1) < module_dropout`, then make_weight's one mask `torch.rand(rows, device=x.device) >
    rank_dropout` over every row of the fused update (divided by its mean where the parts' block rescales,
    a LyCORIS map entry's rank_dropout_scale), the masked update decomposed. The adapted parts of each fused
    layer (a LoRA adapter's, LyCORIS's decomposition on them: runtime/lycoris_dora.py) share that draw, each
    decomposing its rows of the masked update: per output row with its rows' magnitudes (the norm stays
    within a part), per input column (wd_on_out=False; the parts' one (1, in) magnitude, tie_fused_doras) by
    the column norms of every part's masked merged rows; how many fused layers."""
    from dbspec.runtime.lora_dropout import rescaled

    def part(layer) -> bool:  # a decomposed LoRA part
        return dora_scale_of(layer, ADAPTER_NAME) is not None and hasattr(layer, "lora_A")

    wrapped = 0
    for group, index, found in fused_parts(module, fused, part):
        if len(found) < 2:
            continue
        block = module.get_submodule(group.blocks)[index]
        widths = [int(block.get_submodule(p).get_base_layer().weight.shape[0]) for p in group.parts]
        draw = LycorisDraw(len(found), sum(widths), module_dropout, rank_dropout, rescaled(found[0][2]))
        draw.on_device = True
        for position, _, layer in found:
            start = sum(widths[:position])
            layer.forward = _forward(layer, layer.forward, draw, (start, start + widths[position]))
            layer.dbspec_lycoris_draw = layer.dbspec_fused_draw = draw
        wrapped += 1
    return wrapped


def _own_rescale(layer, default: bool) -> bool:
    """The layer's LyCORIS rank_dropout_scale: peft's per-layer table (runtime/loha_weight.py, peft's LoKr;
    a block's own set there by runtime/blocks.py block_rank_dropout_scales), else `default`."""
    own = getattr(layer, "rank_dropout_scale", None)
    if isinstance(own, dict) and ADAPTER_NAME in own:
        return bool(own[ADAPTER_NAME])
    return default


def _forward(layer, peft_forward, draw: LycorisDraw, rows: tuple[int, int]):
    """The part's forward with its fused layer's draw while training; peft's otherwise."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (
            not layer.training
            or layer.disable_adapters
            or layer.merged
            or ADAPTER_NAME not in layer.active_adapters
            or kwargs.get("adapter_names")
        ):
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        skip, mask, output = draw.take(result, x.dtype)
        if skip:
            return result.to(x.dtype)
        if mask is not None:  # a layer of its own whose rows kohya holds the other way round: its draws'
            mask = in_kohya_rows(mask, layer)  # halves swapped (runtime/kohya_rows.py; never a fused part)
        if output is not None and not draw.conv:
            output = in_kohya_rows(output, layer, dim=-1)
        if dora_scale_of(layer, ADAPTER_NAME) is not None:  # dora_wd: the masked update decomposed
            part_mask = None if mask is None else mask[rows[0] : rows[1]]
            delta = layer.dora_delta(ADAPTER_NAME, part_mask, mask)  # per input column: every part's rows
        else:
            delta = layer.get_delta_weight(ADAPTER_NAME)  # the part's rows (use_scalar's scalar in)
            if mask is not None:
                part = mask[rows[0] : rows[1]].to(delta.device, delta.dtype)
                delta = delta * part.view(-1, *[1] * (delta.dim() - 1))
        x_in = layer._cast_input_dtype(x, delta.dtype)
        base = layer.get_base_layer()
        update = base._conv_forward(x_in, delta, None) if draw.conv else F.linear(x_in, delta)
        if output is not None:
            update = update * (output if draw.conv else output[..., rows[0] : rows[1]]).to(update.dtype)
        return (result + update).to(x.dtype)

    return forward
