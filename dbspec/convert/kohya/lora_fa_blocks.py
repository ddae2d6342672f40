"""networks.lora_fa's block arguments (`block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas`,
`down_lr_weight`, `mid_lr_weight`, `up_lr_weight`, `block_lr_zero_threshold`) into [[adapter.blocks]]
(issue 12; was DBS403).

networks/lora_fa.py keeps an older copy of networks/lora.py's block code. Diffed against networks/lora.py:
- SD 1.x/2.x (diffusers module names): the same 25 blocks (`get_block_index`: RE_UPDOWN, `mid_block_`), the
  same lists (`get_block_dims_and_alphas`: 25 values, block_alphas / conv_block_alphas defaulting alike),
  the same lr-weight presets, fill, cut and zero threshold (`get_block_lr_weight`), the same removal of a
  block at weight 0 (`remove_block_dims_and_alphas`) and each block's rate, lr x its weight (lora_fa's
  `get_lr_weight` reads down_lr_weight[index] / mid / up_lr_weight[index - 13], networks.lora's
  block_lr_weight[index]: the same value): networks.lora's mapping (blocks.kohya_blocks) is lora_fa's.
  One difference: lora_fa reads `mid_lr_weight` with one float() (networks.lora splits a comma list), so a
  list or an empty value stops it (ValueError): invalid (DBS402).
- SDXL (original module names: `input_blocks_`, `middle_block_`, `output_blocks_`): lora_fa has no SDXL
  numbering, its get_block_index matches none of them and returns -1 for every U-Net module, so each takes
  the last of the 25 values (`block_dims[-1]`, `block_alphas[-1]`, `conv_block_dims[-1]`, ...; the lists
  must still hold 25 values), its lr weight is 1 (`get_lr_weight` returns 1.0 for an index below 0), and
  only the last up_lr_weight (index 24) can remove modules: at 0 it removes every U-Net module. The other
  weights are read and change nothing (DBS405). The text encoders' modules keep network_dim / network_alpha
  (kohya applies the block lists to the U-Net only).
With block lr weights (set_block_lr_weight: any of down/mid/up_lr_weight) its prepare_optimizer_params gives
each U-Net block its own group and skips a group at rate 0, as networks.lora does, where its plain U-Net
group stays in the optimizer at rate 0 (network.py refuses that U-Net rate with block lr weights)."""

from __future__ import annotations

from dbspec.convert.kohya.blocks import (
    SD_BLOCKS,
    block_list,
    block_lr_weights,
    kohya_blocks,
    string_conv_alpha,
)

# every module kohya's lora_fa adapts on SDXL's U-Net, as dbspec's diffusers paths name them
SDXL_UNET = r"^(down_blocks|mid_block|up_blocks)\."
LR_WEIGHTS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")


def lora_fa_blocks(
    kwargs: dict[str, str],
    original_names: bool,
    dim: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | str | None,
) -> tuple[tuple[list[dict], int | None, float | None] | None, list[tuple[str, str, str]]]:
    """networks/lora_fa.py create_network's block settings as kohya_blocks returns them (None without block
    settings), and the (key, value, why) of arguments it reads without effect. ValueError where kohya stops
    (a list of the wrong length, a mid_lr_weight float() rejects, an unknown preset)."""
    mid = kwargs.get("mid_lr_weight")
    if mid is not None:
        try:
            float(mid)
        except ValueError:
            raise ValueError(
                f"networks.lora_fa reads mid_lr_weight with one float(), which rejects `{mid}` (kohya stops; "
                "networks.lora's comma list is not lora_fa's)"
            ) from None
    if not original_names:
        return kohya_blocks(kwargs, False, dim, alpha, conv_dim, conv_alpha), []
    return _sdxl(kwargs, dim, alpha, conv_dim, conv_alpha)


def _sdxl(
    kwargs: dict[str, str], dim: int, alpha: float, conv_dim: int | None, conv_alpha: float | str | None
) -> tuple[tuple[list[dict], int | None, float | None] | None, list[tuple[str, str, str]]]:
    """lora_fa on SDXL: every U-Net module at block index -1, the lists' last values (module docstring)."""
    given = {k: kwargs[k] for k in LR_WEIGHTS if k in kwargs}
    weights = block_lr_weights(kwargs, False)  # lora_fa's SD 1.x numbering: 25 weights, 24 the last up
    dims_text, alphas_text = kwargs.pop("block_dims", None), kwargs.pop("block_alphas", None)
    conv_dims_text, conv_alphas_text = (
        kwargs.pop("conv_block_dims", None),
        kwargs.pop("conv_block_alphas", None),
    )
    if dims_text is None and weights is None:
        return None, []
    n = SD_BLOCKS
    rank = block_list(dims_text, int, n, "block_dims")[-1] if dims_text else dim
    scale = block_list(alphas_text, float, n, "block_alphas")[-1] if alphas_text else alpha
    entry: dict = {"pattern": SDXL_UNET, "rank": rank, "alpha": scale}
    if conv_dims_text:
        entry["conv_rank"] = block_list(conv_dims_text, int, n, "conv_block_dims")[-1]
        fallback = conv_alpha if isinstance(conv_alpha, float) else 1.0  # a string: string_conv_alpha
        entry["conv_alpha"] = (
            block_list(conv_alphas_text, float, n, "conv_block_alphas")[-1] if conv_alphas_text else fallback
        )
    elif conv_dim is not None:
        entry.update(conv_rank=conv_dim, conv_alpha=conv_alpha)
    if weights is not None and weights[-1] == 0:  # remove_block_dims_and_alphas: index 24 is every module
        entry["rank"] = 0
        entry["conv_rank"] = 0
    if conv_dims_text and not conv_alphas_text:
        string_conv_alpha(conv_alpha, [entry["conv_rank"]])
    if not entry["rank"] and not entry.get("conv_rank"):
        raise NoUnetModules(
            "networks.lora_fa on SDXL builds no U-Net module (every one takes the lists' last value: "
            "block_dims[-1] 0, or the last up_lr_weight 0); dbspec does not express that network"
        )
    why = (
        "networks.lora_fa numbers SD 1.x blocks only: on SDXL every U-Net module is its block index -1, at "
        "lr weight 1 (only the last up_lr_weight, at 0, would change the run: it removes every U-Net module)"
    )
    ignored = [(key, value, why) for key, value in given.items()]
    base_conv = base_conv_alpha = None
    if conv_dims_text and conv_dim is None:  # conv_block_dims alone turns the convolutions on
        base_conv, base_conv_alpha = entry["conv_rank"], entry["conv_alpha"]
    own = {"conv_rank": conv_dim, "conv_alpha": conv_alpha} if conv_dim is not None else {}
    if base_conv is not None:
        own = {"conv_rank": base_conv, "conv_alpha": base_conv_alpha}
    if {k: v for k, v in entry.items() if k != "pattern"} == {"rank": dim, "alpha": alpha, **own}:
        return ([], base_conv, base_conv_alpha), ignored
    entry["_why"] = "kohya networks.lora_fa on SDXL: every U-Net module takes the block lists' last value"
    return ([entry], base_conv, base_conv_alpha), ignored


def lora_fa_block_lr(a) -> bool:
    """networks.lora_fa with block lr weights: create_network calls set_block_lr_weight, and
    prepare_optimizer_params gives the U-Net one group per block, skipping one at rate 0."""
    if "network_module" not in a or a["network_module"].value != "networks.lora_fa":
        return False
    items = a["network_args"].value or []
    return any(str(item).partition("=")[0].strip() in LR_WEIGHTS for item in items)


class NoUnetModules(Exception):
    """networks.lora_fa's block lists leave SDXL's U-Net without a module (refused, DBS403)."""
