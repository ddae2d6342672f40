"""--scale_weight_norms with a --dim_from_weights LoKr / LoHa file on Flux / SD3 (issue 12; was DBS403 "no
dbspec form yet"): create_network_from_weights builds one LokrModule / LohaModule per fused Linear of the
file, the modules algo=lokr / loha builds, whose own apply_max_norm kohya calls after each step: the same
adapter.max_norm as a LoKr / LoHa network built without the file (test_convert_lycoris_flux.py). A file of
several kinds stays DBS403."""

from __future__ import annotations

from convert_kit import codes, errors, fate, plan_of

from tests.unit.test_convert_lycoris_flow_dim_from_weights import W, _factor_file, _flux, _sd3

QKV = "lora_unet_double_blocks_0_img_attn_qkv"
PROJ = "lora_unet_double_blocks_0_img_attn_proj"


def _loha(out: int, inp: int, rank: int) -> dict[str, tuple[int, ...]]:
    return {
        "hada_w1_a": (out, rank),
        "hada_w1_b": (rank, inp),
        "hada_w2_a": (out, rank),
        "hada_w2_b": (rank, inp),
    }


def test_flux_lokr_file_max_norm_is_lycoris_per_fused_module(tmp_path):
    full = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    qkv = {"lokr_w1": (4, 4), "lokr_w2": (2304, 768)}  # 9216 x 3072 by factor 4
    _factor_file(tmp_path / "prev.safetensors", {PROJ: full, QKV: qkv})
    # network_args are unread by create_network_from_weights: a LoKr rank_dropout there draws nothing
    outcome = _flux(tmp_path, "--scale_weight_norms 1.5 --network_args algo=lokr rank_dropout=0.1")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.factor, a.full_matrix) == ("lokr", 1.5, 4, True)
    assert [f.name for f in a.fused] == ["img_attn_qkv"] and a.init_partial


def test_sd3_loha_file_max_norm_with_modules_at_their_own_rank(tmp_path):
    w = 2432  # SD3.5 Large's width
    modules = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": _loha(3 * w, w, 8),
        "lora_unet_joint_blocks_0_x_block_attn_proj": _loha(w, w, 4),  # a block of its own rank
    }
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=4.0)
    outcome = _sd3(tmp_path, "--scale_weight_norms 2")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm) == ("loha", 2.0) and a.blocks
    assert {b.kind for b in a.blocks} <= {"", "loha", "adapter"}


def test_a_file_of_several_kinds_scales_each_kind_as_lycoris(tmp_path):
    """A LoHa module on the fused q/k/v and a LoCon one on the projection: create_network_from_weights builds
    LohaModule and LoConModule, each with its own apply_max_norm: LyCORIS's max norm on both (was DBS403;
    against lycoris-lora's network from such a file: tests/runtime/test_lycoris_mixed_flow_file.py)."""
    modules = {QKV: _loha(3 * W, W, 8), PROJ: {"lora_down.weight": (4, W), "lora_up.weight": (W, 4)}}
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=4.0)
    outcome = _flux(tmp_path, "--scale_weight_norms 1")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.max_norm, a.max_norm_form) == (1.0, "lycoris") and a.init_weights and a.init_partial
    assert {a.kind, *(b.kind for b in a.blocks if b.rank)} >= {"loha", "lora"}
