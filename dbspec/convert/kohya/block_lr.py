"""sdxl_train.py's `--block_lr` (23 comma-separated learning rates, one per U-Net block of kohya's own SDXL
UNet, library/sdxl_original_unet.py) to `[[optimizer.blocks]]`.

sdxl_train.py `get_block_params_to_optimize` puts each parameter of its UNet in a block by its original name:
`time_embed.` and `label_emb.` -> 0, `input_blocks.N.` -> 1 + N, `middle_block.N.` -> 10 + N,
`output_blocks.N.` -> 13 + N, `out.` -> 22; every block whose rate is not 0 becomes one optimizer group at its
rate, in block order (a block at 0 is left out of the optimizer). Each index becomes a pattern over the
diffusers parameter paths of the same tensors: time_embedding and add_embedding (0), conv_in (1,
input_blocks.0), the down blocks' resnet/attention pairs and downsamplers (2-9, `blocks.block_pattern`),
the mid block's resnet, attention, resnet (10-12), the up blocks' pairs with the upsampler in the third
(13-21), conv_norm_out and conv_out (22, out.0 and out.2). The rates take the U-Net's place:
`learning_rate` stays the text encoders' default and decides only whether the U-Net trains (kohya:
`learning_rate != 0`).

The block groups are made before train_util.get_optimizer, so what the optimizer paths do with them:
- Adafactor's relative step (kohya's default for Adafactor; `warmup_init` turns it on): get_optimizer pops
  every group's `lr` and Adafactor computes each tensor's step itself, so the rates change nothing; a block
  at 0 is still out of the optimizer (never trained). With no block at 0 block_lr is ignored (DBS405);
  else the blocks at 0 are written at rate 0 and the others at `learning_rate` (the U-Net's logged initial
  rate, kohya's `adafactor:<learning_rate>` schedule). `fused_backward_pass` (kohya's patched Adafactor
  stepping each tensor in its gradient hook, with its group's settings) alike.
- `fused_optimizer_groups N`: kohya cuts the groups' tensors into chunks of ceil(tensors / N), a new chunk
  where the rate changes (so at every block boundary between different rates), one optimizer and schedule
  each. Optimizers that update each tensor on their own step as one optimizer (train.py _optimizer_groups
  leaves the split out): the blocks at their rates. Where the conversion keeps the chunks (`optimizer.split`:
  Prodigy / D-Adaptation, accumulation, fp16's scaled first chunk, `fused_backward_pass` with the groups)
  dbspec cuts the block groups into them as kohya does (runtime/optim_split.py, the blocks' tensors in
  kohya's UNet's order, blocks in index order); the plan lists the chunks where it reads the U-Net's
  parameter paths (compiler/split.py), and the block groups in the order they are cut. Under Adafactor's
  relative step kohya stops as soon as there are two optimizers: get_optimizer set `learning_rate` to None
  at the first and writes `lr_scheduler = "adafactor:None"` at the second, which get_scheduler_fix's float()
  rejects (DBS402).
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.blocks import SDXL_BLOCKS, block_pattern
from dbspec.convert.kohya.rate_zero import adafactor_relative_step

Args = dict[str, Legacy]


def full_block_pattern(index: int) -> str:
    """The diffusers parameter-path regex of sdxl_train.py's block `index` (0-22)."""
    if index == 0:
        return r"^(time_embedding|add_embedding)\."
    if index == 1:
        return r"^conv_in\."
    if index == SDXL_BLOCKS - 1:
        return r"^(conv_norm_out|conv_out)\."
    pattern = block_pattern(index, original_names=True)
    if pattern is None:
        raise ValueError(f"no SDXL U-Net block {index}")
    return pattern


def map_block_lr(a: Args, script: str, conv: Conversion) -> None:
    """Runs after map_optimizer and map_precision (its note says whether they kept the chunks)."""
    if script != "sdxl_train" or "block_lr" not in a or not a["block_lr"].value:
        return  # kohya: an empty block_lr is none
    legacy = a["block_lr"]
    rates = _rates(legacy, conv)
    if rates is None:
        return
    if not a["learning_rate"].value:
        conv.inert(legacy, "the U-Net does not train (learning_rate 0), so kohya reads no block rate")
        return
    if any(rate < 0 for rate in rates):
        conv.unsupported(legacy, "a negative block learning rate")
        return
    relative = adafactor_relative_step(a)
    if relative and fused_optimizer_count(a, rates) > 1 and not a["lr_scheduler_type"].value:
        conv.invalid(
            legacy.key,
            legacy.value,
            legacy.source,
            "with fused_optimizer_groups and Adafactor's relative step kohya builds one optimizer per chunk "
            "(a new chunk where a block's rate changes); get_optimizer sets learning_rate to None at the "
            'first, so the second writes lr_scheduler "adafactor:None" and get_scheduler_fix raises '
            "(ValueError: could not convert string to float: 'None')",
            help="pass relative_step=False in optimizer_args, or remove fused_optimizer_groups",
        )
        return
    if relative:
        _map_relative(a, legacy, rates, conv)
        return
    _put_blocks(legacy, rates, conv)
    conv.record(legacy, "mapped", "optimizer.blocks", note=_fused_note(a, conv))


def _fused_note(a: Args, conv: Conversion) -> str:
    """What kohya's fused_optimizer_groups chunks (a new one at each change of rate) become."""
    if "fused_optimizer_groups" not in a or not a["fused_optimizer_groups"].value:
        return ""
    if ("optimizer", "split") in conv.values:
        return (
            "optimizer.split cuts the block groups into kohya's chunks, a new one at each change of rate "
            "(dbspec plan lists them)"
        )
    return "kohya's chunks update each tensor on their own: one optimizer with the block groups steps alike"


def _rates(legacy: Legacy, conv: Conversion) -> list[float] | None:
    try:
        rates = [float(item) for item in str(legacy.value).split(",")]
    except ValueError as exc:
        conv.invalid(legacy.key, legacy.value, legacy.source, f"kohya reads each item with float(): {exc}")
        return None
    if len(rates) != SDXL_BLOCKS:
        conv.invalid(
            legacy.key,
            legacy.value,
            legacy.source,
            f"block_lr must have {SDXL_BLOCKS} values (kohya asserts), got {len(rates)}",
        )
        return None
    return rates


def _put_blocks(legacy: Legacy, rates: list[float], conv: Conversion, why: str = "") -> None:
    for index, rate in enumerate(rates):
        where = f"kohya block_lr[{index}] ({legacy.source})"
        conv.put(("optimizer", "blocks", index, "pattern"), full_block_pattern(index), where)
        said = "; 0: not trained" if rate == 0 else why
        conv.put(("optimizer", "blocks", index, "lr"), rate, where + said)


def _map_relative(a: Args, legacy: Legacy, rates: list[float], conv: Conversion) -> None:
    """Adafactor's relative step: the rates are popped, only a block at 0 (out of the optimizer) tells."""
    why = "Adafactor's relative step ignores the groups' rates (kohya removes them)"
    if all(rate > 0 for rate in rates):
        conv.ignored(legacy, why + " and no block is at 0, so every U-Net tensor trains as without it")
        return
    lr = float(a["learning_rate"].value)
    kept = [lr if rate > 0 else 0.0 for rate in rates]
    _put_blocks(legacy, kept, conv, f"; {why}: learning_rate, the logged initial rate")
    conv.record(
        legacy,
        "mapped",
        "optimizer.blocks",
        note=f"{why}; the blocks at 0 stay out of the optimizer (the others at learning_rate {lr:g}, "
        "only the logged initial rate)",
    )


def fused_optimizer_count(a: Args, rates: list[float]) -> int:
    """How many optimizers sdxl_train.py's fused_optimizer_groups builds over the U-Net's groups at `rates`
    (the block groups', or [learning_rate]) and the text encoders' (0 without it): with N > 1, more than one
    (SDXL's U-Net has thousands of tensors); with N = 1, one per run of equal rates along the groups."""
    groups = a["fused_optimizer_groups"].value if "fused_optimizer_groups" in a else None
    if not groups:
        return 0
    if int(groups) > 1:
        return int(groups)
    sequence = [rate for rate in rates if rate != 0] + _text_rates(a)
    return 1 + sum(1 for x, y in zip(sequence, sequence[1:]) if x != y)


def _text_rates(a: Args) -> list[float]:
    """sdxl_train.py's text-encoder groups' rates, in order: with --train_text_encoder each encoder whose
    rate (learning_rate_te1/2, else learning_rate) is not 0, its group at `learning_rate_teN or
    learning_rate`."""
    if not a["train_text_encoder"].value:
        return []
    lr = float(a["learning_rate"].value or 0)
    out = []
    for key in ("learning_rate_te1", "learning_rate_te2"):
        value = a[key].value
        rate = float(value) if value is not None else lr
        if rate != 0:
            out.append(rate)
    return out
