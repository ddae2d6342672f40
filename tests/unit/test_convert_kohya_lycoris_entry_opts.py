"""A LyCORIS preset file's map entries handing their layers module options other than the network's
(dbspec/convert/kohya/lycoris_entry_opts.py), as lycoris-lora 4.1.3's module classes read them: `rs_lora` on
LoRA/LoCon and LoHa is the block's alpha times sqrt(dim); `use_tucker` on LoCon / LoHa linears, `wd_on_out`
without weight decomposition, `rank_dropout_scale` without rank dropout and `bypass_mode` without dropouts or
weight decomposition change nothing (DBS405); the rest is not expressed (DBS403, naming it)
(tests/runtime/test_lycoris_algo_maps.py builds lycoris-lora's network from such a file) (issue 12)."""

from __future__ import annotations

import pytest

import math

from convert_kit import (  # noqa: F401
    SD15,
    codes,
    empty_hub_cache,
    errors,
    expressible,
    fate,
    images,
    kohya,
    messages,
    plan_of,
)

FULL = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""

# rank-stabilised MLPs at their own dim, CLIP's attention rank-stabilised at the network's; entries whose
# options change nothing on their layers (Tucker on linears, wd_on_out without DoRA, bypass without dropouts,
# rank_dropout_scale without rank dropout)
ENTRY_OPTS = (
    FULL
    + """
[module_algo_map]
  [module_algo_map.FeedForward]
    dim = 32
    rs_lora = true
  [module_algo_map.CLIPAttention]
    rs_lora = true
  [module_algo_map.CLIPMLP]
    use_tucker = true
    wd_on_out = false
  [module_algo_map.Transformer2DModel]
    bypass_mode = true
    rank_dropout_scale = true
"""
)


def _convert(tmp_path, text: str, algo: str = "locon", args: str = ""):
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=16 "
        "--network_alpha=8 "
        f'--network_args "algo={algo}" "conv_dim=8" "conv_alpha=4" "preset=p.toml" {args} '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


def _blocks(blocks) -> list[tuple]:
    return [(b.pattern, b.rank, b.alpha) for b in blocks]


def test_entry_options_as_lycoris_modules_read_them(tmp_path):
    outcome = expressible(_convert(tmp_path, ENTRY_OPTS))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 16, 8.0)
    # LoConModule with rs_lora: scale alpha / sqrt(dim), the plain scale of alpha x sqrt(dim)
    assert _blocks(a.blocks) == [(r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 32, 8.0 * math.sqrt(32))]
    assert _blocks(a.text_encoder_blocks) == [
        (r"(?:^|\.)(?:k_proj|v_proj|q_proj|out_proj)$", 16, 8.0 * math.sqrt(16))
    ]
    ignored = messages(outcome, "DBS405")
    for key in ("CLIPMLP.use_tucker", "CLIPMLP.wd_on_out", "Transformer2DModel.bypass_mode"):
        assert f"module_algo_map.{key}" in ignored
    assert "module_algo_map.Transformer2DModel.rank_dropout_scale" in ignored


def test_entry_without_rs_lora_on_a_rank_stabilised_network(tmp_path):
    """network_args rs_lora=True scales every layer by alpha / sqrt(dim); an entry's `rs_lora = false` (a
    TOML boolean: LohaModule's truth test) puts its layers back at alpha / dim."""
    text = FULL + "[module_algo_map.CLIPMLP]\nrs_lora = false\n"
    a = plan_of(expressible(_convert(tmp_path, text, "loha", '"rs_lora=True"')), tmp_path).adapter
    assert (a.kind, a.alpha, a.blocks) == ("loha", 8.0 * math.sqrt(16), ())
    assert _blocks(a.text_encoder_blocks) == [(r"(?:^|\.)(?:fc1|fc2)$", 16, 8.0)]


def test_entry_options_that_change_something_stay_refused(tmp_path):
    cases = [
        # bypass_mode drops the update's output with the network's dropout (LoConModule.bypass_forward_diff)
        ("locon", '"dropout=0.1"', "[module_algo_map.FeedForward]\nbypass_mode = true\n", "`bypass_mode`"),
        # (a LoHa block's own weight decomposition beside the network's rank dropout converts now:
        # test_convert_kohya_loha_locon_rank_dropout.py)
        # (a LoKr entry's own rs_lora on a LoKr network beside other algorithms converts now:
        # test_convert_kohya_refusals_audit.py, tests/runtime/test_lycoris_mixed_rs_lora.py)
    ]
    for i, (algo, args, entry, named) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        outcome = _convert(tmp_path / str(i), FULL + entry, algo, args)
        assert "DBS403" in codes(outcome) and named in messages(outcome, "DBS403"), (algo, entry)
    # a full layer's scale dim / sqrt(dim) at a dim above the pairs' bound converts now (was DBS403): the LoKr
    # block keeps the dim (tests/runtime/test_lycoris_lokr_huge_rs_lora.py)
    (tmp_path / "huge").mkdir()
    entry = "[module_algo_map.FeedForward]\nrs_lora = true\ndim = 10000000000000\n"
    a = plan_of(expressible(_convert(tmp_path / "huge", FULL + entry, "lokr")), tmp_path / "huge").adapter
    assert [(b.rank, b.rank_stabilized) for b in a.blocks] == [(10**13, "on")]


def test_lokr_entry_unbalanced_factorization_becomes_a_block_switch(tmp_path):
    """LokrModule swaps an entry's layers' output split with its own unbalanced_factorization (tested for
    truth: "false" is on), over the network's str_bool: the block's "on" / "off"; an entry's bypass_mode and
    wd_on_out change nothing there (no dropout, no weight decomposition)."""
    text = (
        FULL
        + """
[module_algo_map.CrossAttention]
unbalanced_factorization = "false"
bypass_mode = true
[module_algo_map.FeedForward]
unbalanced_factorization = false
wd_on_out = false
"""
    )
    outcome = expressible(_convert(tmp_path, text, "lokr", '"factor=8" "unbalanced_factorization=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.unbalanced_factorization) == ("lokr", 8, True)
    # the attention's "false" is on, as the network's: no block; the MLP's false turns it off
    assert [(b.pattern, b.unbalanced_factorization) for b in a.blocks] == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", "off")
    ]
    assert "module_algo_map.CrossAttention.bypass_mode" in messages(outcome, "DBS405")


def test_locon_entry_use_tucker_becomes_a_block_tucker(tmp_path):
    """LoConModule builds an entry's k x k convolutions in its Tucker form (lora_mid) with the entry's own
    use_tucker: the block's `tucker` (runtime/locon_tucker.py per layer); on linears it changes nothing.
    LohaModule alike (hada_t1 / hada_t2, runtime/loha_weight.py per layer)."""
    text = (
        FULL
        + "[module_algo_map.ResnetBlock2D]\nuse_tucker = true\n[module_algo_map.CLIPMLP]\nuse_tucker = 1\n"
    )
    outcome = expressible(_convert(tmp_path, text))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.conv_rank) == ("lora", False, 8)
    assert [(b.pattern, b.rank, b.conv_rank, b.tucker) for b in a.blocks] == [
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 16, 8, "on")
    ]
    assert a.text_encoder_blocks == () and "CLIPMLP.use_tucker" in messages(outcome, "DBS405")
    (tmp_path / "loha").mkdir()
    a = plan_of(
        expressible(_convert(tmp_path / "loha", text, "loha", '"use_tucker=True"')), tmp_path / "loha"
    )
    assert [b.tucker for b in a.adapter.blocks] == [] and a.adapter.tucker  # the network's own: no block
    text = FULL + "[module_algo_map.ResnetBlock2D]\nuse_tucker = false\n"
    (tmp_path / "off").mkdir()
    a = plan_of(expressible(_convert(tmp_path / "off", text, "loha", '"use_tucker=True"')), tmp_path / "off")
    assert [(b.rank, b.conv_rank, b.tucker) for b in a.adapter.blocks] == [(16, 8, "off")]


def test_entry_use_scalar_becomes_a_block_scalar(tmp_path):
    """An entry's own use_scalar (LoConModule's, LohaModule's, LokrModule's truth test) over the network's
    str_bool is its block's `scalar` = "on" / "off" (runtime/lycoris_switches.py per layer)."""
    text = (
        FULL + "[module_algo_map.FeedForward]\nuse_scalar = true\n[module_algo_map.CLIPMLP]\nuse_scalar = 1\n"
    )
    a = plan_of(expressible(_convert(tmp_path, text)), tmp_path).adapter
    assert (a.kind, a.scalar) == ("lora", False)
    assert [(b.pattern, b.rank, b.alpha, b.scalar) for b in a.blocks] == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 8.0, "on")
    ]
    assert [(b.pattern, b.scalar) for b in a.text_encoder_blocks] == [(r"(?:^|\.)(?:fc1|fc2)$", "on")]
    (tmp_path / "lokr").mkdir()
    text = FULL + "[module_algo_map.ResnetBlock2D]\nuse_scalar = false\n"
    outcome = expressible(_convert(tmp_path / "lokr", text, "lokr", '"use_scalar=True"'))
    a = plan_of(outcome, tmp_path / "lokr").adapter
    assert (a.kind, a.scalar) == ("lokr", True)
    assert [b.scalar for b in a.blocks] == ["off"] and not a.text_encoder_blocks


def test_entry_use_scalar_with_max_norm_converts(tmp_path):
    """LyCORIS's max norm puts a fixed scalar on the layers without one and multiplies a block's own trained
    one (was DBS403; tests/runtime/test_lycoris_block_scalar_max_norm.py)."""
    text = FULL + "[module_algo_map.FeedForward]\nuse_scalar = true\n"
    outcome = expressible(_convert(tmp_path, text, "locon", "--scale_weight_norms=1.0"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.max_norm, a.max_norm_form, a.scalar) == (1.0, "lycoris", False)
    assert [b.scalar for b in a.blocks] == ["on"]


def test_lokr_entry_rs_lora_becomes_the_block_alpha_and_rank_stabilized(tmp_path):
    """LokrModule with an entry's own rs_lora (its truth test) scales a low-rank layer by alpha / sqrt(dim),
    the block's alpha x sqrt(dim), and a layer whose two factors are full (the MLP's full_matrix) by
    dim / sqrt(dim) = sqrt(dim) in place of 1: the block's rank_stabilized (runtime/adapters.py
    unit_scale_full_lokr per layer). On a rank-stabilised network an entry's rs_lora = false puts its layers
    back at alpha / dim and 1."""
    text = (
        FULL
        + """
[module_algo_map.FeedForward]
full_matrix = true
rs_lora = true
[module_algo_map.CrossAttention]
dim = 4
rs_lora = "yes"
"""
    )
    a = plan_of(expressible(_convert(tmp_path, text, "lokr", '"factor=8"')), tmp_path).adapter
    assert (a.kind, a.factor, a.lokr_rank_stabilized, a.alpha) == ("lokr", 8, False, 8.0)
    assert [(b.pattern, b.rank, b.alpha, b.full_matrix, b.rank_stabilized) for b in a.blocks] == [
        (r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 4, 8.0 * 2, "adapter", "on"),
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 8.0 * 4, "on", "on"),
    ]
    (tmp_path / "rs").mkdir()
    text = FULL + "[module_algo_map.CLIPMLP]\nrs_lora = false\n"
    outcome = expressible(_convert(tmp_path / "rs", text, "lokr", '"rs_lora=True" "full_matrix=True"'))
    a = plan_of(outcome, tmp_path / "rs").adapter
    assert (a.lokr_rank_stabilized, a.full_matrix, a.alpha, a.blocks) == (True, True, 8.0 * 4, ())
    assert [(b.rank, b.alpha, b.rank_stabilized) for b in a.text_encoder_blocks] == [(16, 8.0, "off")]


def test_loha_entry_rank_dropout_scale_becomes_a_block_switch(tmp_path):
    """LohaModule divides the rank-dropout rows an entry's layers keep by their share with the entry's own
    rank_dropout_scale (its truth test; LyCORIS's create_network never hands one to the modules): with the
    network's rank_dropout, the block's "on" (runtime/loha_weight.py per layer); in bypass_mode too
    (LohaModule's bypass forward rebuilds the masked weight with the same rule, issue 12); LoKr's bypass
    forward draws no mask: inert (DBS405)."""
    text = FULL + "[module_algo_map.FeedForward]\nrank_dropout_scale = true\n"
    outcome = expressible(_convert(tmp_path, text, "loha", '"rank_dropout=0.25"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_scale) == ("loha", 0.25, False)
    ff = r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$"
    assert [(b.pattern, b.rank, b.alpha, b.rank_dropout_scale) for b in a.blocks] == [(ff, 16, 8.0, "on")]
    (tmp_path / "bypass").mkdir()
    args = '"rank_dropout=0.25" "bypass_mode=True" "dropout=0.1"'
    outcome = expressible(_convert(tmp_path / "bypass", text, "loha", args))
    a = plan_of(outcome, tmp_path / "bypass").adapter
    assert (a.output_dropout, [(b.pattern, b.rank_dropout_scale) for b in a.blocks]) == (0.1, [(ff, "on")])
    (tmp_path / "lokr").mkdir()
    outcome = expressible(_convert(tmp_path / "lokr", text, "lokr", '"rank_dropout=0.25" "bypass_mode=True"'))
    assert "module_algo_map.FeedForward.rank_dropout_scale" in messages(outcome, "DBS405")
    assert not plan_of(outcome, tmp_path / "lokr").adapter.blocks


@pytest.mark.parametrize("bypass", [False, True])
def test_locon_entry_rank_dropout_scale_becomes_a_block_switch(tmp_path, bypass):
    """LoConModule divides the rows (its bypass forward: the ranks) its rank-dropout mask keeps by their
    share with an entry's own rank_dropout_scale: with the network's rank_dropout, the block's "on" beside
    LyCORIS's rank-dropout form (runtime/lora_dropout.py per layer) (issue 12)."""
    text = FULL + "[module_algo_map.FeedForward]\nrank_dropout_scale = 1\n"
    args = '"rank_dropout=0.25"' + (' "bypass_mode=True"' if bypass else "")
    a = plan_of(expressible(_convert(tmp_path, text, "locon", args)), tmp_path).adapter
    form = "lycoris_bypass" if bypass else "lycoris"
    assert (a.kind, a.rank_dropout, a.rank_dropout_form) == ("lora", 0.25, form)
    assert [(b.pattern, b.rank, b.alpha, b.rank_dropout_scale) for b in a.blocks] == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 8.0, "on")
    ]


def test_entry_bypass_mode_with_weight_decomposition_is_invalid(tmp_path):
    """LoConModule's, LohaModule's and LokrModule's forward take the bypass path before the weight
    decomposition: an entry giving its layers bypass_mode on a dora_wd network, or weight_decompose on a
    bypass_mode network, trains no dora_scale while the file carries it (DBS402, as the network's pair)."""
    cases = [
        ("locon", '"dora_wd=True"', "[module_algo_map.FeedForward]\nbypass_mode = true\n"),
        ("loha", '"bypass_mode=True"', "[module_algo_map.FeedForward]\nweight_decompose = true\n"),
    ]
    for i, (algo, args, entry) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        outcome = _convert(tmp_path / str(i), FULL + entry, algo, args)
        assert "DBS402" in codes(outcome), (algo, codes(outcome))
        assert "FeedForward` gives its layers bypass_mode and weight_decompose" in messages(outcome, "DBS402")


def test_diag_oft_entry_constraint_and_rescaled_become_block_options(tmp_path):
    """algo=diag-oft: create_single_module hands DiagOFTModule an entry's own `constraint` (raw: constraint x
    out_dim, saved as the layer's alpha) and `rescaled` (its truth test) over the network's: the entry's
    [[adapter.blocks]] / [[adapter.text_encoder_blocks]] carry them beside its block size; an entry giving
    the network's value changes nothing (issue 12)."""
    text = (
        FULL
        + "[module_algo_map.FeedForward]\nconstraint = 0.001\n"
        + "[module_algo_map.ResnetBlock2D]\ndim = 32\nrescaled = false\n"
        + '[module_algo_map.CLIPMLP]\nrescaled = "false"\n'  # a string: true to `if rescaled`
        + "[module_algo_map.CLIPAttention]\nconstraint = 0.01\n"  # the network's: no block
    )
    args = '"conv_dim=16" "constraint=0.01" "rescaled=True"'
    a = plan_of(expressible(_convert(tmp_path, text, "diag-oft", args=args)), tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled) == ("diag-oft", 16, 0.01, True)
    shown = [(b.pattern, b.rank, b.conv_rank, b.alpha, b.conv_alpha, b.rescaled) for b in a.blocks]
    assert shown == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 16, 0.001, 0.001, "adapter"),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 32, 32, 0.01, 0.01, "off"),
    ]
    assert a.text_encoder_blocks == ()  # CLIP's MLP: rescaled, as the network


def test_diag_oft_entry_constraint_kohya_cannot_build_or_dbspec_cannot_save(tmp_path):
    """An entry's constraint DiagOFTModule cannot store (a string: torch.tensor raises) stops kohya (DBS402);
    a bool, which LyCORIS saves as the layers' alpha as given, is not expressed (DBS403); a negative one (was
    DBS403) constrains nothing, as DiagOFTModule scales only `if constraint > 0`: its block's constraint 0
    (tests/runtime/test_lycoris_entry_signs.py)."""
    cases = [('"0.01"', "DBS402"), ("true", "DBS403")]
    for i, (value, code) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        text = FULL + f"[module_algo_map.FeedForward]\nconstraint = {value}\n"
        outcome = _convert(tmp_path / str(i), text, "diag-oft", '"conv_dim=16"')
        assert code in codes(outcome) and "constraint" in messages(outcome, code), value
    (tmp_path / "negative").mkdir()
    text = FULL + "[module_algo_map.FeedForward]\nconstraint = -0.5\n"
    a = plan_of(
        expressible(_convert(tmp_path / "negative", text, "diag-oft", '"conv_dim=16"')), tmp_path / "negative"
    )
    assert [b.alpha for b in a.adapter.blocks] == [0.0]  # a Diag-OFT block plan's alpha: its constraint


def test_dylora_entry_block_size_becomes_a_block_unit(tmp_path):
    """algo=dylora: create_single_module hands DyLoraModule an entry's own `block_size` over the network's:
    its layers' [[adapter.blocks]] / [[adapter.text_encoder_blocks]] `unit` (with the entry's dim, checked
    against its own block size);
    an entry giving the network's block_size changes nothing (issue 12)."""
    text = (
        FULL
        + "[module_algo_map.FeedForward]\nblock_size = 8\n"
        + "[module_algo_map.ResnetBlock2D]\ndim = 4\nblock_size = 1\n"
        + "[module_algo_map.CLIPMLP]\nblock_size = 2\n"  # the network's: no block
        + "[module_algo_map.CLIPAttention]\nblock_size = 16\n"
    )
    a = plan_of(expressible(_convert(tmp_path, text, "dylora", '"block_size=2"')), tmp_path).adapter
    assert (a.kind, a.rank, a.conv_rank, a.dylora_unit) == ("dylora", 16, 8, 2)
    shown = [(b.pattern, b.rank, b.conv_rank, b.unit) for b in a.blocks]
    assert shown == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 0, 8),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 4, 4, 1),
    ]
    shown = [(b.pattern, b.rank, b.unit) for b in a.text_encoder_blocks]
    assert shown == [(r"(?:^|\.)(?:k_proj|v_proj|q_proj|out_proj)$", 16, 16)]


def test_dylora_entry_block_size_kohya_cannot_build(tmp_path):
    """An entry's block_size DyLoraModule raises on (not a positive int) or that does not divide the entry's
    dim stops kohya (DBS402); bypass_mode with several of its blocks too."""
    cases = [
        ("block_size = 4.0", "", "DBS402", "block_size = 4.0"),
        ("block_size = 0", "", "DBS402", "block_size = 0"),
        ('block_size = "4"', "", "DBS402", "block_size = '4'"),
        ("block_size = true", "", "DBS402", "block_size = True"),
        ("dim = 12\nblock_size = 8", "", "DBS402", "not a multiple of 8"),
        ("block_size = 8", '"bypass_mode=True" "block_size=16" "conv_dim=16"', "DBS402", "dim 16"),
    ]
    for i, (entry, args, code, named) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        text = FULL + f"[module_algo_map.FeedForward]\n{entry}\n"
        outcome = _convert(tmp_path / str(i), text, "dylora", args)
        assert code in codes(outcome) and named in messages(outcome, code), entry


def test_entry_weight_decompose_becomes_the_block_dora(tmp_path):
    """LoConModule / LohaModule / LokrModule take an entry's own weight_decompose over the network's dora_wd
    (create_single_module hands it raw, tested for truth): those layers alone keep a `dora_scale`, LyCORIS's
    form (dora_form "lycoris" on LoCon), on the network's wd_on_output axis: the block's `dora`."""
    text = FULL + "[module_algo_map.FeedForward]\nweight_decompose = true\n"
    outcome = expressible(_convert(tmp_path, text, "locon", '"wd_on_output=False"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.dora_axis) == (False, "lycoris", "input")
    assert [(b.pattern, b.dora) for b in a.blocks] == [(r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", "on")]
    assert [b.dora for b in a.blocks] == ["on"] and not a.text_encoder_blocks
    (tmp_path / "lokr").mkdir()
    text = FULL + "[module_algo_map.CLIPMLP]\nweight_decompose = false\n"
    outcome = expressible(_convert(tmp_path / "lokr", text, "lokr", '"dora_wd=True"'))
    a = plan_of(outcome, tmp_path / "lokr").adapter
    assert (a.kind, a.dora, a.dora_axis) == ("lokr", True, "output")
    assert [(b.pattern, b.dora) for b in a.text_encoder_blocks] == [(r"(?:^|\.)(?:fc1|fc2)$", "off")]
    assert not a.blocks


def test_entry_wd_on_out_becomes_the_block_dora_axis(tmp_path):
    """LoConModule / LohaModule / LokrModule take an entry's own wd_on_out over the network's wd_on_output
    (raw, tested for truth: "false" is true, "" false) on layers that decompose: the block's `dora_axis`
    (issue 12); on layers that do not it changes nothing (DBS405); on Flux's fused layers a norm per input
    column spans every part's rows: DBS403."""
    text = (
        FULL + '[module_algo_map.FeedForward]\nwd_on_out = false\n[module_algo_map.CLIPMLP]\nwd_on_out = ""\n'
    )
    outcome = expressible(_convert(tmp_path, text, "locon", '"dora_wd=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.dora_axis) == (True, "lycoris", "output")
    ff = r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$"
    assert [(b.pattern, b.dora, b.dora_axis) for b in a.blocks] == [(ff, "adapter", "input")]
    assert [(b.dora, b.dora_axis) for b in a.text_encoder_blocks] == [("adapter", "input")]
    (tmp_path / "own").mkdir()
    text = FULL + '[module_algo_map.FeedForward]\nweight_decompose = true\nwd_on_out = "false"\n'
    text += "[module_algo_map.CLIPMLP]\nwd_on_out = true\n"
    outcome = expressible(_convert(tmp_path / "own", text, "lokr", '"wd_on_output=False"'))
    a = plan_of(outcome, tmp_path / "own").adapter
    assert (a.dora, a.dora_axis) == (False, "input")
    assert [(b.pattern, b.dora, b.dora_axis) for b in a.blocks] == [(ff, "on", "output")]
    assert not a.text_encoder_blocks  # CLIP's MLP does not decompose: its wd_on_out changes nothing
    assert "module_algo_map.CLIPMLP.wd_on_out" in messages(outcome, "DBS405")


def test_entry_weight_decompose_with_dropouts_or_max_norm_is_refused(tmp_path):
    """A block's own weight decomposition beside layers without one: on a LoCon network with the network's
    rank_dropout (was DBS403, a spec's DBS583) every LoConModule draws its row mask in its forward, the
    decomposed ones renormalising the masked update: rank_dropout in LyCORIS's form
    (tests/runtime/test_lycoris_block_dora_rank_dropout.py against lycoris-lora 4.1.3's network); beside
    LoHa entries too (was DBS403; test_lycoris_mixed_rank_dropout.py); beside entries of other algorithms
    (full) too (was DBS403; test_lycoris_rank_dropout_kinds.py);
    with LyCORIS's max norm (was DBS403, a spec's DBS583) each
    layer's update is taken before its decomposition, decomposed or not
    (tests/runtime/test_lycoris_mixed_max_norm.py against lycoris-lora 4.1.3's network)."""
    text = FULL + "[module_algo_map.FeedForward]\nweight_decompose = true\n"
    outcome = _convert(tmp_path, text, "locon", '"rank_dropout=0.1" "module_dropout=0.2"')
    assert not {"DBS402", "DBS403", "DBS583"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form) == ("lora", False, "lycoris")
    assert (a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (0.1, "lycoris", 0.2)
    assert [(b.dora, b.dora_axis) for b in a.blocks] == [("on", "adapter")]
    (tmp_path / "mixed").mkdir()
    mixed = text + '[module_algo_map.ResnetBlock2D]\nalgo = "loha"\n'
    outcome = _convert(tmp_path / "mixed", mixed, "locon", '"rank_dropout=0.1"')
    assert not {"DBS402", "DBS403", "DBS583"} & codes(outcome), errors(outcome)
    (tmp_path / "full").mkdir()
    full = mixed.replace('algo = "loha"', 'algo = "full"')
    outcome = _convert(tmp_path / "full", full, "locon", '"rank_dropout=0.1"')
    assert not {"DBS402", "DBS403", "DBS583"} & codes(outcome), errors(outcome)
    (tmp_path / "n").mkdir()
    outcome = expressible(_convert(tmp_path / "n", text, "locon", "--scale_weight_norms=1.0"))
    a = plan_of(outcome, tmp_path / "n").adapter
    assert (a.max_norm, a.max_norm_form, [b.dora for b in a.blocks]) == (1.0, "lycoris", ["on"])


def test_entry_weight_decompose_with_a_locon_network_weights_file(tmp_path):
    """--network_weights with a LoCon network whose FeedForward entry has its own weight_decompose (SD 1.x):
    LyCORIS's load_weights (load_state_dict, strict=False) loads the file's dora_scale into those modules'
    magnitudes and the factors everywhere (a module without dora_scale keeps its init): init_weights with
    init_partial beside the FeedForward block's dora (was DBS403 from the spec's DBS583; runtime:
    tests/runtime/test_lycoris_block_dora.py against lycoris-lora 4.1.3)."""
    import numpy as np
    from safetensors.numpy import save_file

    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    tensors = {
        f"{block}ff_net_2.lora_down.weight": np.zeros((16, 1280), np.float16),
        f"{block}ff_net_2.lora_up.weight": np.zeros((320, 16), np.float16),
        f"{block}ff_net_2.alpha": np.array(8.0, np.float32),
        f"{block}ff_net_2.dora_scale": np.ones((320, 1), np.float16),
        f"{block}attn1_to_q.lora_down.weight": np.zeros((16, 320), np.float16),
        f"{block}attn1_to_q.lora_up.weight": np.zeros((320, 16), np.float16),
        f"{block}attn1_to_q.alpha": np.array(8.0, np.float32),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    text = FULL + "[module_algo_map.FeedForward]\nweight_decompose = true\n"
    outcome = expressible(_convert(tmp_path, text, "locon", "--network_weights=prev.safetensors"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.init_partial) == ("lora", False, "lycoris", True)
    assert a.init_weights.endswith("prev.safetensors")
    assert [(b.pattern, b.dora) for b in a.blocks] == [(r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", "on")]
    # with --scale_weight_norms (was DBS403, a spec's DBS583): LyCORIS's max norm on every LoCon layer, the
    # file's decomposed ones too (their update before the decomposition, the file's alpha)
    args = "--network_weights=prev.safetensors --scale_weight_norms=1.0"
    a = plan_of(expressible(_convert(tmp_path, text, "locon", args)), tmp_path).adapter
    assert (a.max_norm, a.max_norm_form, a.init_weights.endswith("prev.safetensors")) == (
        1.0,
        "lycoris",
        True,
    )
    assert [b.dora for b in a.blocks] == ["on"]


def test_bypass_mode_on_a_network_of_several_algorithms(tmp_path):
    """bypass_mode on a network whose map entries give some layers another algorithm (a run of several kinds,
    no dropouts there): LoConModule's, LohaModule's, LokrModule's and GLoRAModule's bypass forward gives
    their rebuilt forward's outputs (lycoris-lora 4.1.3, to float rounding, no dropout and no weight
    decomposition), so it changes nothing on those layers and the run converts (was DBS403, DBS578);
    DiagOFTModule's and ButterflyOFTModule's (the bias rotated too) and DyLoraModule's (its one block
    unscaled) change their layers: the adapter's `bypass`, which gives those blocks their bypass forward (was
    DBS403); a DyLoRA entry of several blocks per layer crashes in LyCORIS's bypass forward (DBS402);
    IA3Module's (the bias scaled) the adapter's `bypass` too; FullModule raises on it: DBS402
    (tests/runtime/test_lycoris_bypass_kinds.py); a dropout acts in bypass alone: the adapter's
    output_dropout."""
    entries = '[module_algo_map.FeedForward]\nalgo = "loha"\n[module_algo_map.CLIPMLP]\nalgo = "glora"\n'
    outcome = _convert(tmp_path, FULL + entries, "locon", '"bypass_mode=True"')
    assert "DBS403" not in codes(outcome), messages(outcome, "DBS403")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and {b.kind for b in (*a.blocks, *a.text_encoder_blocks)} >= {"loha", "glora"}
    assert not a.bypass  # LoCon, LoHa and GLoRA alike: nothing for it to change (DBS216 in a spec)
    for algo, network, entry in (
        ("diag-oft", "locon", ""),
        ("boft", "loha", ""),
        ("dylora", "lokr", "dim = 4\n"),  # one block of the network's block_size (4)
        ("dylora", "locon", "dim = 8\nblock_size = 8\n"),
    ):
        where = tmp_path / f"{algo}_{network}_{len(entry)}"
        where.mkdir()
        text = FULL + f'[module_algo_map.FeedForward]\nalgo = "{algo}"\n{entry}'
        outcome = expressible(_convert(where, text, network, '"bypass_mode=True"'))
        a = plan_of(outcome, where).adapter
        assert a.bypass and [b.kind for b in a.blocks] == [algo], (algo, network)
    (tmp_path / "several").mkdir()  # dim 16 in blocks of 4: LyCORIS's bypass forward raises
    outcome = _convert(
        tmp_path / "several",
        FULL + '[module_algo_map.FeedForward]\nalgo = "dylora"\n',
        "locon",
        '"bypass_mode=True"',
    )
    assert "DBS402" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS402")
    # IA3Module's (the bias scaled too): the adapter's `bypass` for its IA^3 blocks (was DBS403;
    # tests/runtime/test_lycoris_ia3_bypass.py against IA3Module)
    (tmp_path / "ia3").mkdir()
    outcome = expressible(
        _convert(
            tmp_path / "ia3",
            FULL + '[module_algo_map.FeedForward]\nalgo = "ia3"\n',
            "locon",
            '"bypass_mode=True"',
        )
    )
    a = plan_of(outcome, tmp_path / "ia3").adapter
    assert a.bypass and [b.kind for b in a.blocks] == ["ia3"]
    (tmp_path / "ia3_off").mkdir()  # without bypass_mode the IA^3 blocks keep the default forward
    outcome = expressible(
        _convert(tmp_path / "ia3_off", FULL + '[module_algo_map.FeedForward]\nalgo = "ia3"\n', "locon")
    )
    assert not plan_of(outcome, tmp_path / "ia3_off").adapter.bypass
    # FullModule(bypass_mode=True) raises ValueError when create_network builds it: kohya stops (DBS402),
    # the network's bypass_mode or the entry's own on a network without it alike
    for name, entry, args in (
        ("full", '[module_algo_map.FeedForward]\nalgo = "full"\n', '"bypass_mode=True"'),
        ("full_own", '[module_algo_map.FeedForward]\nalgo = "full"\nbypass_mode = true\n', ""),
    ):
        (tmp_path / name).mkdir()
        outcome = _convert(tmp_path / name, FULL + entry, "locon", args)
        assert "DBS402" in codes(outcome) and "FullModule raises" in messages(outcome, "DBS402"), name
    # with a dropout bypass_mode changes what it drops (LoConModule.bypass_forward_diff, LohaModule's,
    # GLoRAModule's pairs'): the adapter's output_dropout, the GLoRA blocks' bypass dropout (was DBS403;
    # tests/runtime/test_lycoris_network_dropouts_entries.py)
    (tmp_path / "drop").mkdir()
    outcome = _convert(tmp_path / "drop", FULL + entries, "locon", '"bypass_mode=True", "dropout=0.1"')
    a = plan_of(expressible(outcome), tmp_path / "drop").adapter
    assert (a.bypass, a.output_dropout) == (True, 0.1)


def test_bypass_mode_on_a_dylora_network_with_other_algorithms(tmp_path):
    """algo=dylora with bypass_mode and one block per layer (block_size = network_dim = conv_dim): the
    DyLoRA adapter's `bypass` (DyLoraModule's unscaled bypass forward), its LoHa / GLoRA entries' layers in
    their inert bypass forward, a Diag-OFT entry's layers in its bypass forward (the adapter's `bypass`
    reaches them: runtime/mixed_kinds.py kind_adapter) (was DBS403); with several blocks per layer LyCORIS's
    bypass forward fails (DBS402, convert/kohya/dylora.py)."""
    entries = '[module_algo_map.FeedForward]\nalgo = "loha"\n[module_algo_map.CLIPMLP]\nalgo = "glora"\n'

    def convert(where, text, block_size):
        where.mkdir(exist_ok=True)
        (where / "p.toml").write_text(text, encoding="utf-8")
        images(where / "x" / "10_ohwx", 3, (512, 512))
        return kohya(
            where,
            command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
            "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=8 "
            '--network_alpha=4 --network_args "algo=dylora" "conv_dim=8" "conv_alpha=4" "preset=p.toml" '
            f'"block_size={block_size}" "bypass_mode=True" '
            "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
        )

    outcome = expressible(convert(tmp_path / "one", FULL + entries, 8))
    a = plan_of(outcome, tmp_path / "one").adapter
    assert (a.kind, a.bypass, a.dylora_unit, a.rank) == ("dylora", True, 8, 8)
    assert {b.kind for b in (*a.blocks, *a.text_encoder_blocks)} == {"loha", "glora"}
    outcome = convert(tmp_path / "several", FULL + entries, 4)
    assert "DBS402" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS402")
    outcome = expressible(
        convert(tmp_path / "oft", FULL + '[module_algo_map.FeedForward]\nalgo = "diag-oft"\n', 8)
    )
    a = plan_of(outcome, tmp_path / "oft").adapter  # its bypass the Diag-OFT blocks' too (kind_adapter)
    assert (a.kind, a.bypass, [b.kind for b in a.blocks]) == ("dylora", True, ["diag-oft"])


@pytest.mark.parametrize("algo", ["diag-oft", "boft", "ia3", "dylora"])
@pytest.mark.parametrize("network", [False, True])
def test_entry_own_bypass_mode_becomes_the_blocks_bypass(tmp_path, algo, network):
    """A Diag-OFT, BOFT, IA^3 or DyLoRA entry's own bypass_mode other than the network's (create_single_module
    hands it over the network's; its module tests it for truth): the block's `bypass` "on" / "off" (was
    DBS403), the network's on the adapter only where some such block takes it
    (tests/runtime/test_lycoris_bypass_blocks.py against lycoris-lora 4.1.3's network)."""
    entry = f'[module_algo_map.FeedForward]\nalgo = "{algo}"\nbypass_mode = {str(not network).lower()}\n'
    entry += "dim = 4\n" if algo == "dylora" else ""  # one block of the network's block_size (4)
    args = '"bypass_mode=True"' if network else ""
    outcome = expressible(_convert(tmp_path, FULL + entry, "locon", args))
    a = plan_of(outcome, tmp_path).adapter
    assert [(b.kind, b.bypass) for b in a.blocks] == [(algo, not network)]
    assert not a.bypass  # the one such block takes its own: the network's reaches none (DBS216 else)
    (tmp_path / "two").mkdir()  # beside an entry of the same algo on the network's bypass_mode
    other = f'[module_algo_map.CrossAttention]\nalgo = "{algo}"\n' + ("dim = 4\n" if algo == "dylora" else "")
    outcome = expressible(_convert(tmp_path / "two", FULL + entry + other, "locon", args))
    a = plan_of(outcome, tmp_path / "two").adapter
    assert a.bypass is network
    assert sorted(b.bypass for b in a.blocks) == [False, True]


@pytest.mark.parametrize("network", ["glora", "dylora"])
def test_entry_own_bypass_mode_on_glora_and_dylora_networks(tmp_path, network):
    """A Diag-OFT / IA^3 entry's own bypass_mode on a GLoRA or DyLoRA network (was DBS403): the block's
    `bypass` (tests/runtime/test_lycoris_bypass_blocks.py against lycoris-lora 4.1.3); on a GLoRA network a
    DyLoRA entry's too (one block: its bypass forward), several blocks DBS402; an entry of the network's own
    algorithm takes its own too on a DyLoRA network (a DyloraBlock's `bypass`; was DBS403), on a GLoRA one it
    is inert without a dropout and stays DBS403 with one (a block carries the bypass of Diag-OFT, BOFT,
    DyLoRA and IA^3 layers only)."""
    # a DyLoRA network of one block per layer (its conv_dim too)
    unit = '"block_size=16" "conv_dim=16"' if network == "dylora" else ""
    entry = '[module_algo_map.FeedForward]\nalgo = "diag-oft"\nbypass_mode = true\n'
    entry += '[module_algo_map.ResnetBlock2D]\nalgo = "ia3"\nbypass_mode = true\n'
    outcome = expressible(_convert(tmp_path, FULL + entry, network, unit))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == network and not a.bypass
    assert sorted((b.kind, b.bypass) for b in a.blocks) == [("diag-oft", True), ("ia3", True)]
    (tmp_path / "own").mkdir()
    entry = f'[module_algo_map.FeedForward]\nalgo = "{network}"\ndim = 4\nbypass_mode = true\n'
    entry += "block_size = 4\n" if network == "dylora" else ""  # one block of 4 (its own block_size)
    outcome = _convert(tmp_path / "own", FULL + entry, network, unit)
    if network == "dylora":
        a = plan_of(expressible(outcome), tmp_path / "own").adapter
        assert not a.bypass and [(b.kind, b.rank, b.unit, b.bypass) for b in a.blocks] == [
            ("adapter", 4, 4, True)
        ]
    else:  # GLoRAModule's bypass forward with nothing to drop: its default one (inert, was DBS403); with
        # the network's dropout it stays DBS403 (a GLoRA entry's own bypass differs from the adapter's)
        assert "DBS405" in codes(outcome) and "nothing drops" in messages(outcome, "DBS405")
        (tmp_path / "own_drop").mkdir()
        outcome = _convert(tmp_path / "own_drop", FULL + entry, network, '"dropout=0.1"')
        assert "DBS403" in codes(outcome) and "`bypass_mode` = True" in messages(outcome, "DBS403")
    if network == "glora":
        (tmp_path / "one").mkdir()
        entry = (
            '[module_algo_map.FeedForward]\nalgo = "dylora"\ndim = 4\nblock_size = 4\nbypass_mode = true\n'
        )
        outcome = expressible(_convert(tmp_path / "one", FULL + entry, network))
        a = plan_of(outcome, tmp_path / "one").adapter
        assert [(b.kind, b.bypass, b.rank, b.unit) for b in a.blocks] == [("dylora", True, 4, 4)]
        (tmp_path / "several").mkdir()
        outcome = _convert(
            tmp_path / "several", FULL + entry.replace("block_size = 4", "block_size = 2"), network
        )
        assert "DBS402" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS402")


def test_entry_own_bypass_mode_where_no_block_carries_it(tmp_path):
    """An entry's own bypass_mode on a DyLoRA entry of several blocks per layer: LyCORIS's bypass forward
    raises (DBS402); on a LoCon entry without dropouts: inert (DBS405); on an entry of an IA^3 network's own
    algorithm: the ia3 adapter's own block's `bypass` (was DBS403;
    tests/runtime/test_lycoris_ia3_own_bypass_entries.py)."""
    (tmp_path / "several").mkdir()
    entry = '[module_algo_map.FeedForward]\nalgo = "dylora"\nbypass_mode = true\n'
    outcome = _convert(tmp_path / "several", FULL + entry, "locon")
    assert "DBS402" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS402")
    for on in (True, False):
        (tmp_path / f"ia3-{on}").mkdir()
        entry = f'[module_algo_map.FeedForward]\nalgo = "ia3"\nbypass_mode = {str(on).lower()}\n'
        args = "" if on else '"bypass_mode=True"'
        outcome = expressible(_convert(tmp_path / f"ia3-{on}", FULL + entry, "ia3", args))
        adapter = plan_of(outcome, tmp_path / f"ia3-{on}").adapter
        assert adapter.bypass is not on
        assert [(b.kind, b.rank, b.bypass) for b in adapter.blocks] == [("adapter", 1, on)]
    (tmp_path / "locon").mkdir()
    entry = "[module_algo_map.FeedForward]\nbypass_mode = true\n"
    outcome = expressible(_convert(tmp_path / "locon", FULL + entry, "locon"))
    assert "module_algo_map.FeedForward.bypass_mode" in messages(outcome, "DBS405")
    assert not plan_of(outcome, tmp_path / "locon").adapter.blocks


# kohya's command for an algo=diag-oft / boft network (conv_dim = network_dim: dbspec's one block size)
def _convert_oft(tmp_path, text: str, algo: str, args: str = ""):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=8 "
        f'--network_alpha=8 --network_args "algo={algo}" "conv_dim=8" "preset=p.toml" {args} '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
@pytest.mark.parametrize("network", [True, False])
def test_oft_network_own_entries_bypass_mode_is_their_blocks_bypass(tmp_path, algo, network):
    """An algo=diag-oft / boft network's entries of its own algorithm with a bypass_mode other than the
    network's (create_single_module hands it over the network's: their modules run the other forward; was
    DBS403): their OftBlock's `bypass`, the block kept at the network's block size; the adapter's the
    network's; an entry giving the network's own changes nothing (no block). lycoris-lora 4.1.3's network
    from such a file: tests/runtime/test_lycoris_own_algo_bypass.py."""
    entry = f'[module_algo_map.FeedForward]\nalgo = "{algo}"\nbypass_mode = {str(not network).lower()}\n'
    entry += (
        f'[module_algo_map.CLIPMLP]\nalgo = "{algo}"\ndim = 4\nbypass_mode = {str(not network).lower()}\n'
    )
    entry += f'[module_algo_map.CLIPAttention]\nalgo = "{algo}"\nbypass_mode = {str(network).lower()}\n'
    args = '"bypass_mode=True"' if network else ""
    outcome = expressible(_convert_oft(tmp_path / "one", FULL + entry, algo, args))
    a = plan_of(outcome, tmp_path / "one").adapter
    assert (a.kind, a.bypass, a.oft_block_size) == (algo, network, 8)
    assert [(b.pattern, b.rank, b.bypass) for b in a.blocks] == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 8, not network)
    ]
    assert [(b.pattern, b.rank, b.bypass) for b in a.text_encoder_blocks] == [
        (r"(?:^|\.)(?:fc1|fc2)$", 4, not network)
    ]
    text = (tmp_path / "one" / "specs" / "converted.toml").read_text(encoding="utf-8")
    assert text.count(f'bypass = "{"off" if network else "on"}"') == 2


@pytest.mark.parametrize("network", [True, False])
def test_dylora_network_own_entries_bypass_mode(tmp_path, network):
    """An algo=dylora network's entries of its own algorithm with their own bypass_mode (was DBS403): a
    DyloraBlock's `bypass`; LyCORIS runs the bypass forward with one block per layer only, so an entry
    turning it off may hold several blocks (its modules in the default forward) and one turning it on may
    not (DBS402, as for the network's own)."""
    own = str(not network).lower()
    args = '"block_size=8" "conv_dim=8"' + (' "bypass_mode=True"' if network else "")
    entry = (
        f'[module_algo_map.FeedForward]\nalgo = "dylora"\ndim = {16 if network else 8}\nbypass_mode = {own}\n'
    )
    outcome = expressible(_convert_oft(tmp_path / "one", FULL + entry, "dylora", args))
    a = plan_of(outcome, tmp_path / "one").adapter
    assert (a.kind, a.bypass, a.dylora_unit, a.rank) == ("dylora", network, 8, 8)
    assert [(b.kind, b.rank, b.bypass) for b in a.blocks] == [("adapter", 16 if network else 8, not network)]
    if not network:  # an entry's own bypass_mode on for several blocks: DyLoraModule crashes in training
        several = _convert_oft(
            tmp_path / "several", FULL + entry.replace("dim = 8", "dim = 16"), "dylora", args
        )
        assert "DBS402" in codes(several) and "bypass forward" in messages(several, "DBS402")


MAX_NORM_ENTRIES = (
    FULL + '[module_algo_map.FeedForward]\nalgo = "locon"\n[module_algo_map.CLIPMLP]\nalgo = "loha"\n'
)


@pytest.mark.parametrize(("algo", "kind"), [("glora", "glora"), ("dylora", "dylora"), ("locon", "lora")])
def test_max_norm_scales_the_entries_of_other_algos(tmp_path, algo, kind):
    """--scale_weight_norms on a GLoRA / DyLoRA network whose preset gives some layers LoCon / LoHa: lycoris.
    kohya's apply_max_norm_regularization skips GLoRAModule / DyLoraModule (the base apply_max_norm) and
    scales the LoConModule / LohaModule entries (was inert: the entries went unscaled); on a LoCon network
    with LoHa entries every module (was DBS403 from DBS578). Runtime against lycoris-lora's network:
    tests/runtime/test_lycoris_mixed_max_norm.py."""
    from dbspec.plan.summary import adapter_rows

    text = (
        MAX_NORM_ENTRIES.replace('algo = "locon"\n', 'algo = "lokr"\n')
        if algo == "locon"
        else MAX_NORM_ENTRIES
    )
    outcome = expressible(_convert(tmp_path, text, algo, "--scale_weight_norms=1.5"))
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == (kind, 1.5, "lycoris")
    assert {b.kind for b in a.blocks} == ({"lokr"} if algo == "locon" else {"lora"})
    assert {b.kind for b in a.text_encoder_blocks} == {"loha"}
    row = dict(adapter_rows(a))["  max norm"]
    assert "as its kind's LyCORIS module scales it" in row and "GLoRA and DyLoRA layers never are" in row


def test_max_norm_of_a_glora_network_with_full_entries_only_is_inert(tmp_path):
    """FullModule keeps the base apply_max_norm too: nothing of the network is scaled."""
    text = FULL + '[module_algo_map.FeedForward]\nalgo = "full"\n'
    outcome = expressible(_convert(tmp_path, text, "glora", "--scale_weight_norms=1.5"))
    assert fate(outcome, "scale_weight_norms") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm) == ("glora", 0.0) and {b.kind for b in a.blocks} == {"full"}


@pytest.mark.parametrize("network", ["locon", "ia3"])
def test_ia3_entry_weight_decompose_and_rs_lora_are_inert(tmp_path, network):
    """IA3Module (lycoris-lora 4.1.3 modules/ia3.py) names weight_decompose and rs_lora in its signature and
    never uses them: an IA^3 entry's own are ignored with a warning (DBS405; were DBS403), its blocks the
    same as without them."""
    entry = '[module_algo_map.FeedForward]\nalgo = "ia3"\n'
    plain = plan_of(expressible(_convert(tmp_path, FULL + entry, network)), tmp_path).adapter
    (tmp_path / "own").mkdir()
    own = entry + "weight_decompose = true\nrs_lora = true\n"
    outcome = expressible(_convert(tmp_path / "own", FULL + own, network))
    said = messages(outcome, "DBS405")
    assert "FeedForward.weight_decompose" in said and "FeedForward.rs_lora" in said and "IA3Module" in said
    assert plan_of(outcome, tmp_path / "own").adapter == plain
