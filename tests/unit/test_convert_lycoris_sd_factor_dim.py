"""lycoris.kohya --dim_from_weights with a LyCORIS LoKr or LoHa file on SD 1.x and SDXL
(convert/kohya/lycoris_sd_factor.py; issue 12): create_network_from_weights builds each module from its keys
(LokrModule at the rank, factor and decomposition read off its factors, LohaModule at hada_w1_b's rows, both
at the file's alpha), so the plan adapts exactly the file's layers, modules built otherwise as blocks. The
numbers against lycoris-lora 4.1.3: tests/runtime/test_lycoris_sd_factor_dim_file.py."""

from __future__ import annotations

from convert_kit import SDXL, codes, errors, images, kohya, messages, plan_of
from test_convert_lycoris_sd_rebuilt import CONV, FF, K, Q, TE, _block, _convert, _file, _picks


def _lokr(out: int, inp: int, factor: int, rank: int, alpha: float | None = 1.0) -> dict:
    """LokrModule's factors on a Linear split by `factor` (both parts above 2 x rank: lokr_w2 low-rank)."""
    out_l, in_m = factor, factor
    tensors: dict[str, object] = {
        "lokr_w1": (out_l, in_m),
        "lokr_w2_a": (out // out_l, rank),
        "lokr_w2_b": (rank, inp // in_m),
    }
    return tensors | ({"alpha": alpha} if alpha is not None else {})


def _loha(out: int, inp: int, rank: int, alpha: float = 1.0, kernel: int = 0) -> dict:
    flat = inp * (kernel * kernel if kernel else 1)
    return {
        "hada_w1_a": (out, rank),
        "hada_w1_b": (rank, flat),
        "hada_w2_a": (out, rank),
        "hada_w2_b": (rank, flat),
        "alpha": alpha,
    }


def test_lokr_file_adapts_its_layers_at_their_options(tmp_path):
    modules = {
        Q: _lokr(320, 320, 4, 4, alpha=2.0),
        FF: _lokr(320, 1280, 4, 4, alpha=2.0),
        K: _lokr(320, 320, 4, 8, alpha=2.0),  # its own rank: a block
        CONV: {"lokr_w1": (4, 4), "lokr_w2_a": (160, 2), "lokr_w2_b": (2, 80 * 9), "alpha": 1.0},
        TE: _lokr(768, 768, 4, 4, alpha=2.0),
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and a.init_partial and a.init_weights
    assert (a.rank, a.alpha, a.factor) == (4, 2.0, 4)
    assert (a.conv_rank, a.conv_alpha) == (2, 1.0)
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    assert not _picks(a.conv_targets, "down_blocks.1.resnets.0.conv2")
    assert _picks(a.denoiser_targets, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2")
    assert not _picks(a.denoiser_targets, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v")
    assert _picks(a.text_encoder_targets, "text_model.encoder.layers.3.self_attn.k_proj")
    k = _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k")
    assert k is not None and (k.rank, k.alpha) == (8, 2.0)
    assert _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") is None
    assert outcome.conversion.reports["network_dim"].fate == "inert"


def test_loha_file_with_a_tucker_convolution(tmp_path):
    tucker = {
        "hada_t1": (4, 4, 3, 3),
        "hada_w1_a": (4, 640),
        "hada_w1_b": (4, 320),
        "hada_t2": (4, 4, 3, 3),
        "hada_w2_a": (4, 640),
        "hada_w2_b": (4, 320),
        "alpha": 2.0,
    }
    modules = {Q: _loha(320, 320, 8, 4.0), FF: _loha(320, 1280, 8, 4.0), CONV: tucker, TE: _loha(768, 768, 2)}
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "loha" and (a.rank, a.alpha) == (8, 4.0) and (a.conv_rank, a.conv_alpha) == (4, 2.0)
    assert a.tucker
    te = _block(a.text_encoder_blocks, "text_encoder.text_model.encoder.layers.3.self_attn.k_proj")
    assert te is not None and (te.rank, te.alpha) == (2, 1.0)


def test_what_lycoris_fails_on_is_invalid(tmp_path):
    for case, modules, said in (
        ("noalpha", {Q: _lokr(320, 320, 4, 4, alpha=None)}, "float(None)"),
        # rank 40 on 80 x 80: LokrModule builds a full lokr_w2, and the copy into lokr_w2_a fails
        (
            "shape",
            {Q: {"lokr_w1": (4, 4), "lokr_w2_a": (80, 40), "lokr_w2_b": (40, 80), "alpha": 1.0}},
            "copy_",
        ),
        ("t1", {Q: _loha(320, 320, 4) | {"hada_t1": (4, 4, 3, 3), "hada_t2": (4, 4, 3, 3)}}, "copy_ raises"),
    ):
        outcome = _convert(tmp_path / case, modules)
        assert "DBS402" in codes(outcome) and said in messages(outcome, "DBS402"), errors(outcome)


def test_dora_scale_is_lycoris_weight_decomposition(tmp_path):
    dora = {Q: _lokr(320, 320, 4, 4) | {"dora_scale": (320, 1)}, FF: _lokr(320, 1280, 4, 4)}
    outcome = _convert(tmp_path / "some", dora)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "some").adapter
    q = _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert not a.dora and q is not None and q.dora == "on"
    assert _block(a.blocks, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2") is None
    every = {**dora, FF: dora[FF] | {"dora_scale": (320, 1)}}
    outcome = _convert(tmp_path / "every", every)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "every").adapter
    assert a.dora and not a.blocks
    outcome = _convert(tmp_path / "input", {Q: _lokr(320, 320, 4, 4) | {"dora_scale": (1, 320)}})
    assert "DBS402" in codes(outcome) and "dora_scale" in messages(outcome, "DBS402")


def test_stray_tensors_are_not_expressed(tmp_path):
    # (LoKr beside LoHa / LoCon modules: a run of several kinds, test_convert_lycoris_sd_mixed.py)
    for case, modules, said in (
        # beside the full lokr_w2 make_module_from_state_dict reads, load_state_dict(strict=False) ignores it
        (
            "stray",
            {Q: {"lokr_w1": (4, 4), "lokr_w2": (80, 80), "lokr_w2_b": (4, 80), "alpha": 1.0}},
            "ignores",
        ),
    ):
        outcome = _convert(tmp_path / case, modules)
        assert "DBS403" in codes(outcome) and said in messages(outcome, "DBS403"), errors(outcome)


def test_sdxl_original_names(tmp_path):
    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v": _lokr(640, 640, 4, 4),
            "lora_unet_output_blocks_0_0_in_layers_2": {
                "lokr_w1": (4, 4),
                "lokr_w2_a": (320, 4),
                "lokr_w2_b": (4, 640 * 9),
                "alpha": 1.0,
            },
            "lora_te2_text_model_encoder_layers_20_mlp_fc1": _lokr(5120, 1280, 4, 8),
        },
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        "--train_data_dir=x --resolution=64 --network_module lycoris.kohya "
        "--network_weights prev.safetensors --dim_from_weights --learning_rate=1e-4 --max_train_steps=3 "
        "--output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "lokr"
    assert _picks(a.denoiser_targets, "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v")
    assert _picks(a.conv_targets, "up_blocks.0.resnets.0.conv1")
    fc1 = _block(a.text_encoder_blocks, "text_encoder_2.text_model.encoder.layers.20.mlp.fc1")
    assert fc1 is not None and fc1.rank == 8
    assert not any(c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components)
