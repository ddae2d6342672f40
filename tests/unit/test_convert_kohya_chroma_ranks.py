"""kohya's per-module ranks and rates on Chroma (flux_train_network.py --model_type chroma with
networks.lora_flux) converted exactly: `in_dims`, `network_reg_dims` / `network_reg_lrs` and
`--dim_from_weights`. kohya's LoRANetwork scans Chroma's double blocks (no modulation Linear), single blocks
and, with in_dims, the Linears whose names hold `_img_in`, `_time_in`, `_vector_in`, `_guidance_in` or
`_txt_in`: on Chroma img_in and txt_in alone (no time_in, vector_in or guidance_in; the approximator
`distilled_guidance_layer` holds none of the words). Each module's rank, alpha and rate in the plan is
computed here independently from kohya's rules (first regex `re.search` finds wins; otherwise in_dims for
an embedder, the per-type rank, then the block indices)."""

from __future__ import annotations

import re

import numpy as np
from convert_kit import codes, errors, fate, messages, plan_of
from safetensors.numpy import save_file
from test_convert_kohya_chroma import _chroma

# kohya's Chroma module names inside a block (library/chroma_models.py) -> diffusers' children
DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",)}
EMBEDDERS = {"lora_unet_img_in": "x_embedder", "lora_unet_txt_in": "context_embedder"}
# diffusers' ChromaApproximator Linears: kohya never adapts them
APPROXIMATOR = (
    "distilled_guidance_layer.in_proj",
    "distilled_guidance_layer.layers.0.linear_1",
    "distilled_guidance_layer.layers.4.linear_2",
    "distilled_guidance_layer.out_proj",
)
LR = 1e-4  # the _chroma command's --learning_rate


def _modules(embedders: bool = True):
    for i in range(19):
        for child, paths in DOUBLE.items():
            yield f"lora_unet_double_blocks_{i}_{child}", [f"transformer_blocks.{i}.{p}" for p in paths]
    for i in range(38):
        for child, paths in SINGLE.items():
            yield (
                f"lora_unet_single_blocks_{i}_{child}",
                [f"single_transformer_blocks.{i}.{p}" for p in paths],
            )
    if embedders:
        for name, path in EMBEDDERS.items():
            yield name, [path]


def _planned(plan, path: str):
    """(rank, alpha, rate) the plan gives diffusers module `path`; rank 0 (None, None) when not adapted."""
    a = plan.adapter
    if not any(path == t or path.endswith("." + t) for t in a.denoiser_targets):
        return 0, None, None
    block = next((b for b in a.blocks if re.search(b.pattern, path)), None)
    if block is None:
        return a.rank, a.alpha, plan.optimizer.lr
    if not block.rank:
        return 0, None, None
    return block.rank, block.alpha, block.lr or plan.optimizer.lr * block.lr_scale


def _pairs(text: str, kind) -> dict:
    return {k.strip(): kind(v.strip()) for k, v in (item.split("=", 1) for item in text.split(","))}


def _first(pairs: dict, name: str):
    return next((v for k, v in pairs.items() if re.search(k, name)), None)


def test_in_dims_adapt_img_in_and_txt_in_alone(tmp_path):
    outcome = _chroma(tmp_path, "--network_args in_dims=[8,4,4,4,2]")
    plan = plan_of(outcome, tmp_path)
    assert (_planned(plan, "x_embedder"), _planned(plan, "context_embedder")) == ((8, 8.0, LR), (2, 8.0, LR))
    for path in APPROXIMATOR:  # Chroma's time / guidance input: not an in_dims embedder
        assert _planned(plan, path)[0] == 0, path
    assert not any("embedder." in t for t in plan.adapter.denoiser_targets)  # no time_text_embed Linears
    for what in ("time", "vector", "guidance"):
        assert fate(outcome, f"network_args in_dims {what}") == "inert"
    assert fate(outcome, "network_args") == "mapped"
    for name, paths in _modules(embedders=False):  # the blocks keep network_dim
        assert all(_planned(plan, p) == (16, 8.0, LR) for p in paths), name
    assert _planned(plan, "proj_out")[0] == 0  # the final layer stays out


def test_reg_dims_and_lrs_give_every_chroma_module_kohyas_rank_and_rate(tmp_path):
    """A config over Chroma's modules: regex ranks for late single blocks and txt_in, a rate per stream,
    the per-type and in_dims ranks and the block indices where no regex decides (kohya's rules)."""
    dims = r"single_blocks_(1\d|2\d)_=8,txt_in=8,img_mlp=4,double_blocks_18_=0"
    lrs = r"double_blocks_\d_=5e-4,txt_attn=2e-4,_in=3e-4"
    outcome = _chroma(
        tmp_path,
        f'--network_args "network_reg_dims={dims}" "network_reg_lrs={lrs}" "in_dims=[4,0,0,0,2]" '
        '"img_attn_dim=32" "single_mod_dim=4" "train_single_block_indices=0-29"',
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_args single_mod_dim") == "inert"  # no modulation Linear on Chroma
    plan = plan_of(outcome, tmp_path)
    reg_dims, reg_lrs = _pairs(dims, int), _pairs(lrs, float)
    checked = 0
    for name, paths in _modules():
        rank = _first(reg_dims, name)
        if rank is None and name in EMBEDDERS:
            rank = 4 if name.endswith("img_in") else 2  # in_dims
        elif rank is None:
            rank = 32 if "img_attn" in name else 16
            if "single" in name and int(name.split("_")[4]) > 29:
                rank = 0
        rate = (_first(reg_lrs, name) or LR) if rank else None
        for path in paths:
            assert _planned(plan, path) == ((rank, 8.0, rate) if rank else (0, None, None)), (name, path)
            checked += 1
    assert checked == 19 * 12 + 38 * 5 + 2
    for path in (*APPROXIMATOR, "proj_out"):
        assert _planned(plan, path)[0] == 0, path


def test_regexes_reaching_t5_when_it_trains(tmp_path):
    """train_t5xxl=True: kohya's regexes apply to T5-XXL's modules (lora_te3_encoder_block_N_...) too:
    [[adapter.text_encoder_blocks]] over Chroma's T5 (its only text encoder, `text_encoder`; was DBS403); a
    regex limited to the denoiser converts, T5 at the network's rank."""
    t5 = "--network_args train_t5xxl=True network_reg_dims=SelfAttention_q=8 --text_encoder_lr 1e-5 5e-5"
    ranked = _chroma(tmp_path, t5, cached="")
    assert fate(ranked, "network_args") == "mapped", errors(ranked)
    blocks = plan_of(ranked, tmp_path).adapter.text_encoder_blocks
    for path, rank in (
        ("encoder.block.23.layer.0.SelfAttention.q", 8),
        ("encoder.block.0.layer.0.SelfAttention.k", 16),
    ):
        block = next((b for b in blocks if re.search(b.pattern, f"text_encoder.{path}")), None)
        assert (block.rank if block else 16) == rank, path
    narrowed = _chroma(tmp_path, t5.replace("SelfAttention_q", "lora_unet_.*_qkv"), cached="")
    plan = plan_of(narrowed, tmp_path)
    assert plan.adapter.t5_targets and plan.optimizer.text_encoder_lr == 5e-5
    assert _planned(plan, "transformer_blocks.3.attn.add_k_proj")[0] == 8
    assert _planned(plan, "single_transformer_blocks.3.proj_mlp")[0] == 16  # linear1: no `_qkv`


def _kohya_file(path, ranks: dict[str, tuple[int, float]]) -> None:
    tensors = {}
    for name, (rank, alpha) in ranks.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, 8), dtype=np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((8, rank), dtype=np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float16)
    save_file(tensors, str(path))


def test_dim_from_weights_builds_the_files_chroma_modules_at_their_ranks(tmp_path):
    """create_network_from_weights on Chroma: each module of the file that kohya's network scans (blocks,
    img_in, txt_in) at its own rank and alpha; a Flux modulation Linear, the approximator and the final
    layer in the file build nothing (load_state_dict(strict=False) ignores them); T5-XXL's modules train
    T5."""
    ranks = {name: (16, 8.0) for name, _ in _modules(embedders=False) if "blocks_7_" not in name}
    ranks |= {"lora_unet_single_blocks_5_linear1": (8, 4.0), "lora_unet_img_in": (4, 4.0)}
    ignored = ("distilled_guidance_layer_in_proj", "double_blocks_0_img_mod_lin", "final_layer_linear")
    ranks |= {f"lora_unet_{name}": (4, 4.0) for name in ignored}
    ranks |= {f"lora_te3_encoder_block_{i}_layer_0_SelfAttention_q": (16, 8.0) for i in range(24)}
    _kohya_file(tmp_path / "start.safetensors", ranks)
    outcome = _chroma(
        tmp_path,
        "--network_weights start.safetensors --dim_from_weights --network_args img_attn_dim=2",
        cached="",
    )
    plan = plan_of(outcome, tmp_path)
    for name, paths in _modules():
        rank, alpha = ranks.get(name, (0, None))
        for path in paths:
            assert _planned(plan, path)[:2] == (rank, alpha), (name, path)
    for path in (*APPROXIMATOR, "proj_out", "transformer_blocks.0.norm1.linear"):
        assert _planned(plan, path)[0] == 0, path
    a = plan.adapter
    assert a.init_weights.endswith("start.safetensors") and a.init_partial
    assert a.t5_targets and {c.name: c.trainable for c in plan.precision.components}["text_encoder"] == "lora"
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    assert fate(outcome, "network_args") == "inert"  # create_network_from_weights reads none (a warning)
    assert "create_network_from_weights reads none" in messages(outcome, "DBS405")
