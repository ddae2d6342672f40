"""kohya networks.lora's dropouts on peft LoRA layers (`plan.adapter.down_dropout`, `rank_dropout`,
`module_dropout` for kind "lora"; peft's LoHa and LoKr have their own).

kohya's LoRAModule.forward while training: with probability `module_dropout` (one `torch.rand(1)` on the CPU)
the layer returns the base output alone; otherwise torch's dropout with p = `down_dropout` (kohya's
`network_dropout`) acts on the down projection's output, then that output is multiplied by a mask
`torch.rand((batch, rank), device=...) > rank_dropout` (broadcast over tokens or pixels) and the update is
scaled by 1 / (1 - rank_dropout) on top of alpha / rank. The draws come from torch's global generator, as
kohya's do: gradient checkpointing restores it for the recomputed forward (same masks), and checkpoints save
it, so a resumed run draws what an uninterrupted one draws. Outside training (validation, adapters disabled
for a base-model prior) the layer runs peft's own forward. LoCon's Tucker layers (locon_tucker.py) count
`lora_down` then `lora_mid` as the down projection: the dropouts act on lora_mid's output (where LyCORIS's
bypass forward masks ranks too).

`form` (plan.adapter.rank_dropout_form) picks LyCORIS LoCon's rank dropout instead (lycoris-lora 4.1.3
lycoris/modules/locon.py, what kohya's lycoris.kohya network trains with `algo=lora`/`locon`): its default
forward rebuilds ΔW and multiplies its output rows by `torch.rand(out, device=x.device) > rank_dropout`
("lycoris"), the same as masking the update's output channels; its bypass forward multiplies the down
projection's output (after lora_mid) by `torch.rand(rank, device=...) > rank_dropout`, one mask for the whole
batch ("lycoris_bypass"). Neither rescales the kept rows: kohya's network never passes
`rank_dropout_scale`; a LyCORIS preset map entry's own does (LoConModule's `drop /= drop.mean()`), set on its
block's layers (`dbspec_rank_dropout_scale`, runtime/blocks.py). The draw follows module_dropout's, as in
LoConModule.forward. `output_dropout` is the bypass forward's `dropout`: torch's dropout of the update (x
scale), drawn last."""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.kohya_rows import dropped_in_kohya_rows, in_kohya_rows


def add_lora_dropout(
    module: torch.nn.Module,
    rank_dropout: float,
    module_dropout: float,
    multiplier: float = 1.0,
    down_dropout: float = 0.0,
    form: str = "kohya",
    output_dropout: float = 0.0,
) -> int:
    """Wrap the forward of every plain LoRA layer in `module`; returns how many were wrapped. `multiplier`
    (kohya's network multiplier) scales the update in training and evaluation alike; alpha is untouched, so
    the exports keep it. `form`: whose rank-dropout rule (above)."""
    count = 0
    for layer in module.modules():
        if _decomposed(layer):  # LyCORIS's weight decomposition: its forward draws (lycoris_dora.py)
            layer.dbspec_dora_module_dropout = module_dropout
            layer.dbspec_dora_rank_dropout = rank_dropout if form == "lycoris" else 0.0
            count += 1
        elif (
            isinstance(layer, LoraLayer)
            and ADAPTER_NAME in layer.lora_A
            and not layer.use_dora.get(ADAPTER_NAME)
            and not hasattr(layer, "dbspec_fused_draw")  # a fused layer's part: runtime/fused_dropout.py
        ):
            layer.forward = _forward(
                layer,
                layer.forward,
                rank_dropout,
                module_dropout,
                multiplier,
                down_dropout,
                form,
                output_dropout,
            )
            count += 1
    return count


def _forward(
    layer,
    peft_forward,
    rank_dropout: float,
    module_dropout: float,
    multiplier: float,
    down_dropout: float,
    form: str = "kohya",
    output_dropout: float = 0.0,
):
    mids = getattr(layer, "lora_mid", None)
    mid = mids[ADAPTER_NAME] if mids is not None and ADAPTER_NAME in mids else None

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if layer.disable_adapters or layer.merged or kwargs.get("adapter_names"):
            return peft_forward(x, *args, **kwargs)
        training = layer.training
        result = layer.base_layer(x, *args, **kwargs)
        skipped = training and module_dropout and bool(torch.rand(1) < module_dropout)
        layer.dbspec_module_skipped = skipped  # read by runtime/ggpo.py (kohya perturbs no skipped layer)
        if skipped:
            return result
        lora_a, lora_b = layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]
        lx = lora_a(layer.lora_dropout[ADAPTER_NAME](x.to(lora_a.weight.dtype)))  # peft's input dropout
        if mid is not None:  # LoCon's Tucker form: the down projection is lora_down, then lora_mid
            lx = mid(lx)
        if training and down_dropout:  # kohya's network_dropout, on the down projection's output
            lx = torch.nn.functional.dropout(lx, p=down_dropout)
        scale = layer.scaling[ADAPTER_NAME] * multiplier
        if training and rank_dropout and form == "lycoris_bypass":  # LoConModule.bypass_forward_diff
            keep = (torch.rand(layer.r[ADAPTER_NAME], device=lx.device) > rank_dropout).to(lx.dtype)
            keep = keep / keep.mean() if rescaled(layer) else keep
            lx = lx * (keep.view(1, -1, 1, 1) if lx.dim() == 4 else keep)
        elif training and rank_dropout and form == "lycoris":  # LoConModule.make_weight: ΔW's output rows
            update = lora_b(lx)
            keep = torch.rand(update.size(1 if update.dim() == 4 else -1), device=x.device) > rank_dropout
            keep = in_kohya_rows(keep.to(update.dtype), layer)  # SD3 / Flux's swapped modulation rows
            keep = keep / keep.mean() if rescaled(layer) else keep
            update = update * (keep.view(-1, 1, 1) if update.dim() == 4 else keep)
            return (result + _dropped(update * scale, training, output_dropout, layer)).to(result.dtype)
        elif training and rank_dropout:
            mask = torch.rand((lx.size(0), layer.r[ADAPTER_NAME]), device=lx.device) > rank_dropout
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)
            elif lx.dim() == 4:
                mask = mask.unsqueeze(-1).unsqueeze(-1)
            lx = lx * mask
            scale = scale * (1.0 / (1.0 - rank_dropout))
        return (result + _dropped(lora_b(lx) * scale, training, output_dropout, layer)).to(result.dtype)

    return forward


def _decomposed(layer) -> bool:
    """A LoRA / LoCon layer with LyCORIS's weight decomposition (runtime/lycoris_dora.py): LoConModule's
    module dropout and row mask act in its own forward, around the renormalisation; the compiler keeps the
    other dropouts, the multiplier and the other rank-dropout forms off it (DBS267)."""
    from dbspec.runtime.lycoris_dora import LycorisDora

    return (
        isinstance(layer, LycorisDora)
        and isinstance(layer, LoraLayer)
        and ADAPTER_NAME in layer.dora_scales()
        and not hasattr(layer, "dbspec_fused_draw")
    )


def rescaled(layer) -> bool:
    """LyCORIS LoConModule's `rank_dropout_scale` on the layer: its block's own (a LyCORIS map entry's,
    runtime/blocks.py block_rank_dropout_scales); off otherwise, as kohya's network never passes it."""
    return bool(getattr(layer, "dbspec_rank_dropout_scale", False))


def _dropped(update: torch.Tensor, training: bool, output_dropout: float, layer=None) -> torch.Tensor:
    """LoConModule's bypass `dropout` (torch's) on the scaled update while training (over kohya's row order:
    runtime/kohya_rows.py)."""
    return dropped_in_kohya_rows(update, output_dropout, layer) if training and output_dropout else update
