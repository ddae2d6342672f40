"""lycoris.kohya --dim_from_weights with a LyCORIS file mixing LoCon, LoKr and LoHa modules on SD 1.x
(convert/kohya/lycoris_sd_mixed.py; issue 12): create_network_from_weights builds each module by its keys, so
the plan is a run of several kinds (blocks with their own `kind`) over exactly the file's layers, started
from it. The numbers against lycoris-lora 4.1.3: tests/runtime/test_lycoris_mixed_file.py."""

from __future__ import annotations

from convert_kit import SDXL, codes, errors, images, kohya, messages, plan_of
from test_convert_lycoris_sd_factor_dim import _loha, _lokr
from test_convert_lycoris_sd_rebuilt import CONV, FF, K, Q, TE, _block, _convert, _file, _glora, _oft, _picks


def _locon(out: int, inp: int, rank: int, alpha: float | None = 1.0, kernel: int = 0) -> dict:
    k = (kernel, kernel) if kernel else ()
    tensors: dict[str, object] = {
        "lora_down.weight": (rank, inp, *k),
        "lora_up.weight": (out, rank, *((1, 1) if kernel else ())),
    }
    return tensors | ({"alpha": alpha} if alpha is not None else {})


ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def test_lokr_loha_and_locon_modules_are_blocks_of_their_kind(tmp_path):
    modules = {
        Q: _lokr(320, 320, 4, 4, alpha=2.0),
        K: _locon(320, 320, 8, alpha=4.0),
        FF: _loha(320, 1280, 2, alpha=1.0),
        CONV: _locon(640, 320, 4, alpha=2.0, kernel=3),
        TE: _loha(768, 768, 4, alpha=4.0),
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and a.init_partial and a.init_weights
    assert (a.rank, a.alpha, a.factor) == (4, 2.0, 4)
    for path in (f"{ATTN}.to_q", f"{ATTN}.to_k", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"):
        assert _picks(a.denoiser_targets, path), path
    assert not _picks(a.denoiser_targets, f"{ATTN}.to_v")
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    assert not _picks(a.conv_targets, "down_blocks.1.resnets.0.conv2")
    assert _block(a.blocks, f"{ATTN}.to_q") is None  # the adapter's own LoKr
    k = _block(a.blocks, f"{ATTN}.to_k")
    assert (k.kind, k.rank, k.alpha) == ("lora", 8, 4.0)
    ff = _block(a.blocks, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2")
    assert (ff.kind, ff.rank, ff.alpha) == ("loha", 2, 1.0)
    conv = _block(a.blocks, "down_blocks.1.resnets.0.conv1")
    assert (conv.kind, conv.conv_rank, conv.conv_alpha) == ("lora", 4, 2.0)
    te = _block(a.text_encoder_blocks, "text_encoder.text_model.encoder.layers.3.self_attn.k_proj")
    assert (te.kind, te.rank, te.alpha) == ("loha", 4, 4.0)
    assert _picks(a.text_encoder_targets, "text_model.encoder.layers.3.self_attn.k_proj")


def test_locon_and_loha_file_is_a_loha_run_with_lora_blocks(tmp_path):
    outcome = _convert(tmp_path, {Q: _loha(320, 320, 4, alpha=2.0), K: _locon(320, 320, 8, alpha=0.0)})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("loha", 4, 2.0)
    k = _block(a.blocks, f"{ATTN}.to_k")
    assert (k.kind, k.rank, k.alpha) == ("lora", 8, 8.0)  # LoConModule: alpha 0 is the dim


def test_what_a_run_of_several_kinds_cannot_build_or_lycoris_fails_on(tmp_path):
    for case, modules, code, said in (
        (  # make_module_from_state_dict's wd_on_out: a per-column magnitude does not load
            "dora-columns",
            {Q: _lokr(320, 320, 4, 4), K: _locon(320, 320, 4) | {"dora_scale": (1, 320)}},
            "DBS402",
            "dora_scale",
        ),
        ("no-alpha", {Q: _lokr(320, 320, 4, 4), K: _locon(320, 320, 4, alpha=None)}, "DBS402", "alpha"),
        ("full-dims", {Q: _lokr(320, 320, 4, 4), K: {"diff": (320, 320, 1, 1)}}, "DBS402", "dimensions"),
    ):
        outcome = _convert(tmp_path / case, modules)
        assert code in codes(outcome) and said in messages(outcome, code), (case, errors(outcome))


def test_locon_module_lora_mid_beside_other_kinds_is_its_blocks_tucker(tmp_path):
    """A LoCon convolution's `lora_mid` beside a LoKr module (was DBS403): make_module_from_state_dict builds
    it with use_tucker, dbspec's block of kind lora `tucker = "on"` (runtime test: test_lycoris_mixed_file);
    on a Linear it has no Tucker core (DBS402)."""
    tucker = _locon(640, 320, 4, kernel=3) | {"lora_mid.weight": (4, 4, 3, 3)}
    outcome = _convert(tmp_path, {Q: _lokr(320, 320, 4, 4), CONV: tucker})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    (block,) = [b for b in a.blocks if b.kind == "lora"]
    assert (block.conv_rank, block.tucker) == (4, "on")
    linear = _locon(320, 320, 4) | {"lora_mid.weight": (4, 4)}
    outcome = _convert(tmp_path / "linear", {Q: _lokr(320, 320, 4, 4), K: linear})
    assert "DBS402" in codes(outcome) and "Tucker" in messages(outcome, "DBS402")


def test_loha_and_lokr_tucker_modules_beside_other_kinds_are_their_blocks_tucker(tmp_path):
    """A LoHa convolution's `hada_t1` / `hada_t2` beside a LoKr module, and a LoKr convolution's `lokr_t2`
    (the adapter's own kind) beside a LoCon one (was DBS403): make_module_from_state_dict builds them with
    use_tucker, dbspec's block `tucker = "on"` (of kind loha; the lokr adapter's own), the adapter's Tucker
    form off (runtime test: test_lycoris_mixed_file)."""
    loha = {
        "hada_t1": (4, 4, 3, 3),
        "hada_w1_a": (4, 640),
        "hada_w1_b": (4, 320),
        "hada_t2": (4, 4, 3, 3),
        "hada_w2_a": (4, 640),
        "hada_w2_b": (4, 320),
        "alpha": 2.0,
    }
    outcome = _convert(tmp_path, {Q: _lokr(320, 320, 4, 4), CONV: loha})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    (block,) = [b for b in a.blocks if b.kind == "loha"]
    assert (a.tucker, block.conv_rank, block.conv_alpha, block.tucker) == (False, 4, 2.0, "on")
    # conv_out (320 -> 4): LokrModule.make_module_from_state_dict reads the dim off `lokr_w2_a`'s columns,
    # its second output part (2) here, so it rebuilds the file's module (elsewhere DBS402: the copy fails)
    lokr = {
        "lokr_w1": (2, 16),
        "lokr_t2": (2, 2, 3, 3),
        "lokr_w2_a": (2, 2),
        "lokr_w2_b": (2, 20),
        "alpha": 1.0,
    }
    out = "lora_unet_conv_out"
    outcome = _convert(tmp_path / "lokr", {Q: _lokr(320, 320, 4, 4), K: _locon(320, 320, 8), out: lokr})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "lokr").adapter
    conv = _block(a.blocks, "conv_out")
    assert (a.kind, a.tucker, conv.kind, conv.conv_rank, conv.tucker) == ("lokr", False, "adapter", 2, "on")
    assert _block(a.blocks, f"{ATTN}.to_k").kind == "lora"


def test_oft_module_rescale_beside_other_kinds_is_its_blocks_rescaled(tmp_path):
    """A Diag-OFT module's `rescale` beside a LoKr one (was DBS403): make_module_from_state_dict builds it
    with rescaled, dbspec's block of kind diag-oft `rescaled = "on"` (runtime test:
    test_lycoris_mixed_file)."""
    outcome = _convert(tmp_path, {Q: _lokr(320, 320, 4, 4), K: _oft(4, 320)})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    k = _block(a.blocks, f"{ATTN}.to_k")
    assert (k.kind, k.rank, k.rescaled) == ("diag-oft", 4, "on")


def test_locon_file_with_oft_and_glora_modules_is_a_lora_run_with_their_blocks(tmp_path):
    modules = {
        Q: _locon(320, 320, 4, alpha=2.0),
        TE: _locon(768, 768, 4, alpha=2.0),
        K: _oft(8, 320, alpha=0.5, rescale=False),  # DiagOFTModule: lora_dim 8, constraint 0.5
        FF: _glora(2, 1280, out=320, alpha=1.0),
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 4, 2.0)
    q = _block(a.blocks, f"{ATTN}.to_q")
    assert (q.kind, q.rank, q.alpha) == ("adapter", 4, 2.0)  # the plan names the own kind so
    k = _block(a.blocks, f"{ATTN}.to_k")
    assert (k.kind, k.rank, k.alpha) == ("diag-oft", 8, 0.5)
    ff = _block(a.blocks, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2")
    assert (ff.kind, ff.rank, ff.alpha) == ("glora", 2, 1.0)


def test_sdxl_original_names(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v": _lokr(640, 640, 4, 4),
            "lora_unet_output_blocks_0_0_in_layers_2": _locon(1280, 2560, 4, alpha=2.0, kernel=3),
            "lora_te2_text_model_encoder_layers_20_mlp_fc1": _loha(5120, 1280, 8),
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
    conv = _block(a.blocks, "up_blocks.0.resnets.0.conv1")
    assert (conv.kind, conv.conv_rank, conv.conv_alpha) == ("lora", 4, 2.0)
    fc1 = _block(a.text_encoder_blocks, "text_encoder_2.text_model.encoder.layers.20.mlp.fc1")
    assert (fc1.kind, fc1.rank) == ("loha", 8)
    assert not any(c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components)


def test_full_modules_are_full_blocks_from_twice_their_diff(tmp_path):
    """FullModule.make_module_from_state_dict copies the diff into its weight, apply_to adds W, and
    load_weights' prehook adds the diff again: the full blocks start at W + 2 diff (init_scale 2; was
    DBS403). The outputs against lycoris-lora: test_lycoris_mixed_file.py."""
    modules = {
        Q: _lokr(320, 320, 4, 4, alpha=2.0),
        K: {"diff": (320, 320)},
        CONV: {"diff": (640, 320, 3, 3), "diff_b": (640,)},
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale) == ("lokr", 2.0) and a.init_partial and a.init_weights
    k = _block(a.blocks, f"{ATTN}.to_k")
    assert k.kind == "full" and k.rank > 0
    conv = _block(a.blocks, "down_blocks.1.resnets.0.conv1")
    assert conv.kind == "full" and conv.conv_rank > 0
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    outcome = _convert(tmp_path / "no-full", {Q: _lokr(320, 320, 4, 4), K: _locon(320, 320, 4)})
    assert plan_of(outcome, tmp_path / "no-full").adapter.init_scale == 1.0


def test_unet_locon_with_clip_lokr_converts_like_the_reverse_pairing(tmp_path):
    """A U-Net LoCon module beside a CLIP LoKr module (was refused with "it holds no module of the U-Net":
    the LoKr modules, which lead the adapter, were read as a file of that kind alone): a LoKr adapter at the
    CLIP module's values, the U-Net's LoCon module a block of kind lora over its layer; the reverse pairing
    (U-Net LoKr, CLIP LoCon) a LoKr adapter with a lora text block. With --network_train_unet_only apply_to
    drops the CLIP module: the LoKr kind has no layer to lead, refused (DBS403)."""
    te = "text_encoder.text_model.encoder.layers.3.self_attn.k_proj"
    for modules, unet_kind, text_kind in (
        ({K: _locon(320, 320, 8, alpha=4.0), TE: _lokr(768, 768, 4, 4, alpha=2.0)}, "lora", None),
        ({K: _lokr(320, 320, 4, 4, alpha=2.0), TE: _locon(768, 768, 8, alpha=4.0)}, None, "lora"),
    ):
        outcome = _convert(tmp_path / str(unet_kind), modules)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / str(unet_kind)).adapter
        assert (a.kind, a.rank, a.alpha, a.factor) == ("lokr", 4, 2.0, 4) and a.init_weights
        assert _picks(a.denoiser_targets, f"{ATTN}.to_k") and not _picks(a.denoiser_targets, f"{ATTN}.to_q")
        assert _picks(a.text_encoder_targets, "text_model.encoder.layers.3.self_attn.k_proj")
        unet, text = _block(a.blocks, f"{ATTN}.to_k"), _block(a.text_encoder_blocks, te)
        assert (unet.kind, unet.rank, unet.alpha) == ("lora", 8, 4.0) if unet_kind else unet is None
        assert (text.kind, text.rank, text.alpha) == ("lora", 8, 4.0) if text_kind else text is None
    outcome = _convert(tmp_path / "only", modules, "--dim_from_weights --network_train_unet_only")
    assert "DBS403" not in codes(outcome), errors(outcome)  # the U-Net LoKr leads: converts
    only = {K: _locon(320, 320, 8, alpha=4.0), TE: _lokr(768, 768, 4, 4, alpha=2.0)}
    outcome = _convert(tmp_path / "only2", only, "--dim_from_weights --network_train_unet_only")
    assert "U-Net" in messages(outcome, "DBS403")


def test_dora_scale_modules_beside_other_kinds_decompose_their_layers(tmp_path):
    """Modules holding a `dora_scale` (make_module_from_state_dict builds them with weight_decompose) in a
    file of several kinds (was DBS403 / DBS578): where some of the LoKr modules and a LoCon and LoHa hold one,
    those blocks' `dora = "on"` (a LoKr module's in its own block); where every LoKr module does, the
    adapter's `dora`, a LoCon module without one its block's "off"; on a LoCon-led file LyCORIS's form
    (runtime tests: test_lycoris_mixed_file, test_lycoris_block_dora)."""
    dora = {"dora_scale": (320, 1)}
    some = {
        Q: _lokr(320, 320, 4, 4) | dora,
        f"{Q[:-2]}_v": _lokr(320, 320, 4, 4),
        K: _locon(320, 320, 8) | dora,
        FF: _loha(320, 1280, 2) | {"dora_scale": (320, 1)},
        CONV: _locon(640, 320, 4, kernel=3),
    }
    outcome = _convert(tmp_path, some)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and not a.dora and a.dora_form == "lycoris"
    for path, want in (
        (f"{ATTN}.to_k", ("lora", "on")),
        ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", ("loha", "on")),
        ("down_blocks.1.resnets.0.conv1", ("lora", "adapter")),
        (f"{ATTN}.to_q", ("adapter", "on")),
    ):
        block = _block(a.blocks, path)
        assert (block.kind, block.dora) == want, path
    assert _block(a.blocks, f"{ATTN}.to_v") is None  # the adapter's own LoKr, not decomposed
    every = {
        Q: _lokr(320, 320, 4, 4) | dora,
        K: _locon(320, 320, 8) | dora,
        CONV: _locon(640, 320, 4, kernel=3),
    }
    outcome = _convert(tmp_path / "every", every)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "every").adapter
    assert a.dora and a.dora_axis == "output"
    assert (
        _block(a.blocks, f"{ATTN}.to_k").dora,
        _block(a.blocks, "down_blocks.1.resnets.0.conv1").dora,
    ) == (
        "adapter",
        "off",
    )
    led = {K: _locon(320, 320, 8) | dora, Q: _locon(320, 320, 8), FF: _loha(320, 1280, 2)}
    outcome = _convert(tmp_path / "led", led)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "led").adapter
    assert (a.kind, a.dora, a.dora_form) == ("loha", False, "lycoris")
    assert (_block(a.blocks, f"{ATTN}.to_k").dora, _block(a.blocks, f"{ATTN}.to_q").dora) == ("on", "adapter")
