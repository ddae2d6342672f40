"""kohya's networks.lora_sd3 (sd3_train_network.py) into [adapter], exactly: its target set, its fused layers
and the network_args dbspec can express, as networks/lora_sd3.py's create_network reads them.

lora_sd3 puts a LoRA on every Linear of each joint block's context_block and x_block (the family registry's
`kohya_lora_targets`, diffusers names: the attention's q/k/v and output, SD3.5 medium's second image
attention, the MLP and the adaLN modulation). Its LoRA on a fused q/k/v Linear has one down-projection shared
by the parts (`adapter.fused_projections = true`); `split_qkv=True` gives each part its own (fused_projections
false), which kohya builds for SD3.

Mapped network_args: split_qkv, train_block_indices, the per-type ranks (context_attn_dim ... x_mod_dim),
emb_dims (the x_embedder's on its patch convolution: conv_targets), rank_dropout, module_dropout, the LoRA+
ratios and train_t5xxl (`train.t5`, T5-XXL at text_encoder_lr's third value:
`optimizer.text_encoder_3_lr`)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lora_flux import dropouts, network_dropout, rest, selection, train_t5, true
from dbspec.convert.kohya.network import KOHYA_TEXT_TARGETS, _loraplus, parse_network_args
from dbspec.families import family_spec

_BLOCK = r"^transformer_blocks\."
_TYPE_DIMS = {  # kohya's words in its module names -> the diffusers paths
    "context_attn_dim": _BLOCK + r"\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    "context_mlp_dim": _BLOCK + r"\d+\.ff_context\.",
    "context_mod_dim": _BLOCK + r"\d+\.norm1_context\.linear$",
    "x_attn_dim": _BLOCK + r"\d+\.attn2?\.(to_q|to_k|to_v|to_out\.0)$",  # "attn" is in attn2 too
    "x_mlp_dim": _BLOCK + r"\d+\.ff\.",
    "x_mod_dim": _BLOCK + r"\d+\.norm1\.linear$",
}
# emb_dims [context_embedder, t_embedder, x_embedder, y_embedder, final_mod, final_linear]: diffusers
# targets and path patterns (None: the x_embedder, a patch convolution)
_EMB_DIMS = (
    (("context_embedder",), r"^context_embedder$"),
    (("timestep_embedder.linear_1", "timestep_embedder.linear_2"), r"^time_text_embed\.timestep_embedder\."),
    None,
    (("text_embedder.linear_1", "text_embedder.linear_2"), r"^time_text_embed\.text_embedder\."),
    (("norm_out.linear",), r"^norm_out\.linear$"),
    (("proj_out",), r"^proj_out$"),
)
_BLOCK_LIMIT = 999  # create_network parses train_block_indices against 999 blocks


def _patch(kwargs: dict[str, str], rank: int, alpha: float, args: Legacy, conv: Conversion) -> None:
    """emb_dims' x embedder: create_modules(filter="x_embedder", include_conv2d_if_filter) builds kohya's
    LoRAModule on the patch convolution x_embedder.proj (diffusers' pos_embed.proj, a p x p stride-p
    Conv2d): lora_down a Conv2d of its kernel, stride and padding, lora_up 1x1, scale alpha / rank (alpha 0:
    the rank), as peft's LoRA on a Conv2d, dbspec's conv_targets at conv_rank / conv_alpha. Its rank and
    alpha: `conv_dim` / `conv_alpha` (1.0 by default) where network_args give conv_dim (0: no module),
    which create_modules reads before the emb_dims value; else the x value at network_alpha. Without
    emb_dims kohya builds no module there, and conv_dim is inert (lora_flux.rest)."""
    if "conv_dim" in kwargs:
        legacy = Legacy(key=f"{args.key} conv_dim", value=kwargs["conv_dim"], source=args.source)
        rank = int(kwargs.pop("conv_dim"))
        alpha = float(kwargs.pop("conv_alpha", "1.0") or "1.0")
        conv.record(legacy, "mapped", "adapter.conv_rank", "the patch convolution's rank (before emb_dims')")
    if not rank:
        return
    why = conv.comment(args, "emb_dims: kohya's LoRA on the x embedder's patch convolution")
    conv.put(("adapter", "conv_targets"), ["pos_embed.proj"], why)
    conv.put(("adapter", "conv_rank"), rank, why)
    conv.put(("adapter", "conv_alpha"), alpha if alpha else float(rank), why)  # LoRAModule: alpha 0 -> rank


def map_lora_sd3(a: dict[str, Legacy], dim: int, alpha: float, conv: Conversion) -> bool:
    """[adapter] for networks.lora_sd3; False when a network argument is invalid for kohya."""
    args = a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    try:
        return _map(kwargs, args, dim, alpha, a, conv)
    except ValueError as exc:
        conv.invalid(args.key, args.value, args.source, f"kohya's lora_sd3 asserts on it ({exc})")
        return False


def _map(kwargs: dict[str, str], args: Legacy, dim: int, alpha: float, a, conv: Conversion) -> bool:
    why = conv.comment(a["network_module"], "networks/lora_sd3.py: every Linear of the joint blocks")
    targets = list(family_spec("sd3").kohya_lora_targets)
    blocks: list[dict[str, Any]] = []
    unsupported: dict[str, str] = {}
    if "train_block_indices" in kwargs:
        flags = selection(kwargs.pop("train_block_indices"), _BLOCK_LIMIT)
        kept = "|".join(str(i) for i, on in enumerate(flags) if on)
        if not kept:
            blocks.append({"pattern": _BLOCK, "rank": 0, "alpha": 1.0, "_why": "train_block_indices"})
        elif not all(flags):
            pattern = _BLOCK + f"(?!(?:{kept})\\.)\\d+\\."
            blocks.append({"pattern": pattern, "rank": 0, "alpha": 1.0, "_why": "train_block_indices"})
    type_dims = {key: int(kwargs.pop(key)) for key in list(_TYPE_DIMS) if key in kwargs}
    if "emb_dims" in kwargs:
        text = kwargs.pop("emb_dims").strip().removeprefix("[").removesuffix("]")
        emb_dims = [int(d) for d in text.split(",")]
        if len(emb_dims) != 6:
            raise ValueError(
                f"emb_dims has {len(emb_dims)} numbers, not 6 (context, t, x, y, final_mod, final_linear)"
            )
        for entry, rank in zip(_EMB_DIMS, emb_dims):
            if entry is None:  # the x embedder's patch convolution
                _patch(kwargs, rank, alpha, args, conv)
                continue
            if not rank:
                continue
            names, pattern = entry
            targets.extend(names)
            blocks.append({"pattern": pattern, "rank": rank, "alpha": alpha, "_why": "emb_dims"})
    for key, rank in type_dims.items():
        blocks.append({"pattern": _TYPE_DIMS[key], "rank": rank, "alpha": alpha, "_why": key})
    split = true(kwargs.pop("split_qkv", "False"))
    conv.put(("adapter", "denoiser_targets"), targets, why)
    conv.put(("adapter", "text_encoder_targets"), list(KOHYA_TEXT_TARGETS), why + " (CLIPAttention, CLIPMLP)")
    conv.put(
        ("adapter", "fused_projections"),
        not split,
        conv.comment(
            args, "split_qkv=True: one LoRA per part" if split else "one LoRA (one down) per fused Linear"
        ),
    )
    for index, block in enumerate(blocks):
        note = conv.comment(args, block.pop("_why"))
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, note)
    if not dropouts(kwargs, args, split, conv):
        return False
    put: dict[str, Any] = {}
    _loraplus(kwargs, put, unsupported)
    for key, value in put.items():
        conv.put(("adapter", key), value, conv.comment(args))
    if not train_t5(kwargs, args, a, conv, "sd3_train_network.py"):
        return False
    rest(kwargs, args, unsupported, conv, "networks.lora_sd3", {})
    network_dropout(a["network_dropout"], split, conv)
    return True
