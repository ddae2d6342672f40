"""LyCORIS preset files with `module_algo_map` / `name_algo_map` (network_args `preset=<file>.toml`,
lycoris.kohya) on SD 1.x / 2.x and SDXL: entries that keep the network's algorithm and give their layers
another dim / alpha convert to [[adapter.blocks]] / [[adapter.text_encoder_blocks]] (LoRA/LoCon, LoHa, LoKr),
resolved as lycoris-lora 4.1.3's kohya network resolves them (tests/runtime/test_lycoris_algo_maps.py builds
its network from the same files); another algorithm, other module options, and per-layer dims on the other
algorithms are not expressed (DBS403); an unknown algorithm name or an argument create_single_module already
passes stops kohya (DBS402)."""

from __future__ import annotations

import math
import re

import pytest

from convert_kit import (  # noqa: F401
    SD15,
    SD21,
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
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""

# LoRA on the ResNets at a low dim, the transformers' MLPs at a higher one, CLIP's MLP at its own
RESNETS_LOW = (
    FULL
    + """
[module_algo_map]
  [module_algo_map.ResnetBlock2D]
    algo = "locon"
    dim = 4
    alpha = 1
  [module_algo_map.FeedForward]
    dim = 32
  [module_algo_map.CLIPMLP]
    algo = "lora"
    dim = 8
    alpha = 8
"""
)

# lycoris-lora's example_configs/preset_configs/example.toml (its SD 1.x part): LoKr on the attention and MLP,
# LoRA on the ResNets and CLIP's attention
EXAMPLE = (
    FULL
    + """
[module_algo_map]
  [module_algo_map.CrossAttention]
    algo = "lokr"
    dim = 10000000000000
    factor = 64
  [module_algo_map.FeedForward]
    algo = "lokr"
    dim = 100000000000
    factor = 12
  [module_algo_map.ResnetBlock2D]
    algo = "lora"
    dim = 4
    alpha = 1
    use_tucker = true
    factor = 8
  [module_algo_map.CLIPAttention]
    algo = "lora"
    dim = 8
    alpha = 1
"""
)


def _convert(tmp_path, text: str, algo: str = "locon", args: str = "", model: str = SD15):
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={model} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=16 "
        "--network_alpha=8 "
        f'--network_args "algo={algo}" "conv_dim=8" "conv_alpha=4" "preset=p.toml" {args} '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


def _blocks(blocks) -> list[tuple]:
    return [(b.pattern, b.rank, b.alpha, b.conv_rank, b.conv_alpha) for b in blocks]


def test_class_entries_become_blocks(tmp_path):
    outcome = expressible(_convert(tmp_path, RESNETS_LOW))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("lora", 16, 8.0, 8, 4.0)
    assert _blocks(a.blocks) == [
        # FeedForward: dim 32, the network's alpha (LyCORIS: `alpha or self.alpha`)
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 32, 8.0, 0, 1.0),
        # ResnetBlock2D: dim 4 / alpha 1 on its linear and on its 3x3 and 1x1 convolutions alike
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 4, 1.0, 4, 1.0),
    ]
    assert _blocks(a.text_encoder_blocks) == [(r"(?:^|\.)(?:fc1|fc2)$", 8, 8.0, 0, 1.0)]
    # the downsamplers' convolutions and conv_in / conv_out keep the network's conv_dim
    assert set(a.conv_targets) == {"conv_in", "conv1", "conv2", "conv", "conv_out"}
    assert fate(outcome, "network_args") == "mapped"


def test_name_entries_before_class_entries_on_sd2(tmp_path):
    """A name the file targets takes the first name_algo_map entry whose key is its path or re.matches it,
    else its class's module_algo_map entry (here `Linear`, as LyCORIS reads a Linear's class); inside a target
    class a nested class's entry reaches the layers first (Linear's, not Transformer2DModel's)."""
    text = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["conv_in", 'down_blocks\\.1\\.resnets\\.0\\.conv[12]', "time_embedding.linear_1"]
text_encoder_target_module = []
text_encoder_target_name = ['text_model\\.encoder\\.layers\\.1[01]\\.self_attn\\.[qk]_proj']

[module_algo_map.Linear]
dim = 6
alpha = 2
[module_algo_map.Transformer2DModel]
dim = 12
[name_algo_map.conv_in]
dim = 2
alpha = 2
[name_algo_map.'down_blocks\\.1\\.resnets\\.0\\.conv1']
dim = 24
[name_algo_map.'text_model\\.encoder\\.layers\\.10\\.']
dim = 2
alpha = 0.5
"""
    outcome = expressible(_convert(tmp_path, text, "lokr", model=SD21, args="--v2 --v_parameterization"))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr"
    found = {b.pattern: (b.rank, b.alpha, b.conv_rank, b.conv_alpha) for b in a.blocks}
    # every linear at the Linear entry's dim 6 / alpha 2: inside Transformer2DModel (SD 2.x's proj_in /
    # proj_out too) and the named time_embedding.linear_1, which no name entry matches
    linear = next(p for p in found if "to_q" in p)
    assert found[linear][:2] == (6, 2.0)
    for path in (
        "down_blocks.0.attentions.0.proj_in",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    ):
        assert re.search(linear, path)
    assert re.search(linear, "time_embedding.linear_1")
    assert found[r"(?:^|\.)(?:conv_in)$"] == (16, 8.0, 2, 2.0)  # convolutions only: the linear values unused
    assert found[r"(?:^|\.)(?:conv1)$"] == (16, 8.0, 24, 4.0)  # a name entry's dim, the network's alpha
    assert len(found) == 3  # conv2 keeps the network's conv dim / alpha: no block
    assert _blocks(a.text_encoder_blocks) == [
        (r"(?:^|\.)(?:layers\.10\.self_attn\.k_proj|layers\.10\.self_attn\.q_proj)$", 2, 0.5, 0, 1.0),
        (r"(?:^|\.)(?:layers\.11\.self_attn\.k_proj|layers\.11\.self_attn\.q_proj)$", 6, 2.0, 0, 1.0),
    ]


def test_entry_dim_adapts_convolutions_with_enable_conv_off(tmp_path):
    """create_single_module adapts a k x k convolution when the network has a conv dim or the entry a dim:
    with enable_conv off only the entry's convolutions are built."""
    text = """\
enable_conv = false
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ["conv_out"]
text_encoder_target_module = []
[module_algo_map.ResnetBlock2D]
dim = 2
"""
    a = plan_of(expressible(_convert(tmp_path, text)), tmp_path).adapter
    assert a.conv_targets == ("conv1", "conv2") and a.conv_rank == 8
    assert _blocks(a.blocks) == [(r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 2, 8.0, 2, 4.0)]


def test_rs_lora_scales_block_alphas(tmp_path):
    a = plan_of(expressible(_convert(tmp_path, RESNETS_LOW, args="")), tmp_path).adapter
    plain = {b.pattern: b.alpha for b in a.blocks}
    b = plan_of(expressible(_convert(tmp_path, RESNETS_LOW, args='"rs_lora=True"')), tmp_path).adapter
    scaled = {blk.pattern: (blk.rank, blk.alpha) for blk in b.blocks}
    assert b.alpha == 8.0 * math.sqrt(16)
    assert {p: alpha for p, (_, alpha) in scaled.items()} == {
        p: plain[p] * math.sqrt(rank) for p, (rank, _) in scaled.items()
    }


def test_entries_without_effect_write_no_block(tmp_path):
    """Entries that keep the algorithm and give no dim / alpha, and entries for classes the file never
    reaches, change nothing (an entry's dim 16 / alpha 8 on the ResNets would: it replaces their convolutions'
    conv_dim 8 / conv_alpha 4 too)."""
    text = FULL + '[module_algo_map.ResnetBlock2D]\nalgo = "lokr"\n' + "[module_algo_map.T5Block]\ndim = 2\n"
    a = plan_of(expressible(_convert(tmp_path, text, "lokr")), tmp_path).adapter
    assert a.blocks == () and a.text_encoder_blocks == ()


def test_dims_change_nothing_for_full(tmp_path):
    text = FULL + "[module_algo_map.FeedForward]\ndim = 32\n"
    a = plan_of(expressible(_convert(tmp_path, text, "full")), tmp_path).adapter
    assert a.kind == "full" and a.blocks == ()


def test_lycoris_example_mixes_algorithms(tmp_path):
    """LyCORIS's example.toml converts (issue 12; was DBS403): its LoKr entries beside the LoCon network's
    layers are blocks of kind lokr at their own factor (LyCORIS's full-matrix dim idiom, rank 100000), built
    alone (runtime/mixed_kinds.py; tests/runtime/test_lycoris_whole_main_own_opts.py checks an entry's own
    factor against lycoris-lora 4.1.3)."""
    outcome = expressible(_convert(tmp_path, EXAMPLE))
    a = plan_of(outcome, tmp_path).adapter
    lokr = {(b.rank, b.factor) for b in a.blocks if b.kind == "lokr"}
    assert lokr == {(100_000, 64), (100_000, 12)}
    assert "module_algo_map.ResnetBlock2D.factor" in messages(outcome, "DBS405")  # LoConModule: never read


def test_entry_wd_on_out_is_the_block_axis(tmp_path):
    """An entry's own wd_on_out on decomposed layers: its block's `dora_axis` (issue 12; was not expressed),
    beside its own weight_decompose, the block's dora (test_convert_kohya_lycoris_entry_opts)."""
    text = FULL + '[module_algo_map.CrossAttention]\nalgo = "lokr"\nwd_on_out = false\n'
    a = plan_of(expressible(_convert(tmp_path, text, "lokr", '"dora_wd=True"')), tmp_path).adapter
    assert (a.dora, a.dora_axis, [(b.dora, b.dora_axis) for b in a.blocks]) == (
        True,
        "output",
        [("adapter", "input")],
    )
    (tmp_path / "loha").mkdir()
    text = FULL + "[module_algo_map.ResnetBlock2D]\nweight_decompose = true\nwd_on_out = false\n"
    a = plan_of(expressible(_convert(tmp_path / "loha", text, "loha")), tmp_path / "loha").adapter
    assert (a.dora, a.dora_axis, [(b.dora, b.dora_axis) for b in a.blocks]) == (
        False,
        "output",
        [("on", "input")],
    )


# LoKr entries switching LokrModule's options against the network's (decompose_both=True, factor=8): the
# attention without decompose_both, the ResNets' k x k convolutions in Tucker form, the MLPs and CLIP's MLP
# with both factors full; a string is tested for truth as LokrModule tests it ("false" is on)
LOKR_SWITCHES = (
    FULL
    + """
[module_algo_map]
  [module_algo_map.CrossAttention]
    decompose_both = false
  [module_algo_map.ResnetBlock2D]
    use_tucker = true
    dim = 4
  [module_algo_map.FeedForward]
    full_matrix = true
    decompose_both = true
  [module_algo_map.CLIPMLP]
    full_matrix = "false"
  [module_algo_map.CLIPAttention]
    use_tucker = true
"""
)


def test_lokr_entry_switches_become_block_switches(tmp_path):
    """A LoKr entry's own decompose_both / full_matrix / use_tucker (LokrModule's truth tests, the entry's
    value over the network's) become its block's "on" / "off"; use_tucker on linears only (CLIP) changes
    nothing; the plan settles a full block's other switches off (issue 12)."""
    outcome = expressible(_convert(tmp_path, LOKR_SWITCHES, "lokr", args='"factor=8" "decompose_both=True"'))
    assert "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.decompose_both, a.full_matrix, a.tucker) == ("lokr", 8, True, False, False)
    switches = [(b.pattern, b.rank, b.conv_rank, b.decompose_both, b.full_matrix, b.tucker) for b in a.blocks]
    assert switches == [
        (r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 16, 0, "off", "adapter", "adapter"),
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 16, 0, "off", "on", "adapter"),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 4, 4, "adapter", "adapter", "on"),
    ]
    text = [(b.pattern, b.decompose_both, b.full_matrix) for b in a.text_encoder_blocks]
    assert text == [(r"(?:^|\.)(?:fc1|fc2)$", "off", "on")]


# lycoris-lora's example.toml with LoKr alone: the attention at factor 64 and the MLPs at factor 12, both at
# its full-matrix idiom, CLIP's MLP in full at the network's factor, the ResNets at their own factor and dim
LOKR_EXAMPLE = (
    FULL
    + """
[module_algo_map]
  [module_algo_map.CrossAttention]  # Attention Layer in UNet
    algo = "lokr"
    dim = 10000000000000
    factor = 64                     # Try to fit the head dim (doesn't have special effect)
  [module_algo_map.FeedForward]     # MLP Layer in UNet
    algo = "lokr"
    dim = 100000000000              # Trigger full matrix
    factor = 12
  [module_algo_map.ResnetBlock2D]
    algo = "lokr"
    dim = 4
    alpha = 1
    factor = 4
  [module_algo_map.CLIPMLP]         # MLP Layer in TE
    algo = "lokr"
    dim = 100000000000              # Trigger full matrix
"""
)


def test_lokr_entry_factors_become_block_factors(tmp_path):
    """A LoKr entry's own `factor` (LokrModule's int(factor), in place of the network's) is its block's
    `factor`; LyCORIS's full-matrix idiom (dim 10^11: every layer full at scale 1) is a block at LoKr's bound
    of 100000, where LokrModule builds the same full factors on every layer (issue 12)."""
    outcome = expressible(_convert(tmp_path, LOKR_EXAMPLE, "lokr"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.factor) == ("lokr", 16, 8.0, -1)
    assert [(*row, b.factor) for row, b in zip(_blocks(a.blocks), a.blocks)] == [
        (r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 100000, 100000.0, 0, 1.0, 64),
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 100000, 100000.0, 0, 1.0, 12),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 4, 1.0, 4, 1.0, 4),
    ]
    assert [(b.pattern, b.rank, b.alpha, b.factor) for b in a.text_encoder_blocks] == [
        (r"(?:^|\.)(?:fc1|fc2)$", 100000, 100000.0, 0)
    ]


def test_lokr_entry_factor_zero_and_negative(tmp_path):
    """LokrModule's factor 0 splits as 1 (1 x dim), any negative one as -1; an entry factor equal to the
    network's makes no block; one int() cannot read stops kohya (DBS402)."""
    text = FULL + "[module_algo_map.FeedForward]\nfactor = 0\n[module_algo_map.ResnetBlock2D]\nfactor = -3\n"
    a = plan_of(expressible(_convert(tmp_path, text, "lokr", args='"factor=8"')), tmp_path).adapter
    assert [(b.rank, b.alpha, b.conv_rank, b.factor) for b in a.blocks] == [(16, 8.0, 0, 1), (16, 8.0, 8, -1)]
    (tmp_path / "bad").mkdir()
    outcome = _convert(tmp_path / "bad", FULL + '[module_algo_map.FeedForward]\nfactor = "x"\n', "lokr")
    assert "DBS402" in codes(outcome) and "int() raises" in messages(outcome, "DBS402")


def test_boft_entry_dims_constraint_and_rescaled_become_blocks(tmp_path):
    """algo=boft: LycorisNetworkKohya hands ButterflyOFTModule an entry's dim as its lora_dim (the block-size
    hint of power2factorization) and its own constraint / rescaled over the network's, as for Diag-OFT:
    [[adapter.blocks]] / [[adapter.text_encoder_blocks]] with the entry's `block_size`, `constraint`,
    `rescaled` (issue 12)."""
    text = (
        FULL
        + "[module_algo_map.FeedForward]\ndim = 32\nrescaled = true\n"
        + "[module_algo_map.CLIPMLP]\nconstraint = 0.001\n"
    )
    a = plan_of(expressible(_convert(tmp_path, text, "boft", args='"conv_dim=16"')), tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled) == ("boft", 16, 0.0, False)
    shown = [(b.pattern, b.rank, b.conv_rank, b.alpha, b.rescaled) for b in a.blocks]
    assert shown == [(r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 32, 32, 0.0, "on")]
    shown = [(b.pattern, b.rank, b.alpha, b.rescaled) for b in a.text_encoder_blocks]
    assert shown == [(r"(?:^|\.)(?:fc1|fc2)$", 16, 0.001, "adapter")]


def test_diag_oft_entry_dims_are_block_sizes(tmp_path):
    """algo=diag-oft: LycorisNetworkKohya hands DiagOFTModule an entry's dim as its lora_dim, the block-size
    hint (linear and convolution alike), and an alpha it never reads (its constraint is the network's):
    [[adapter.blocks]] / [[adapter.text_encoder_blocks]] with the entry's `block_size`."""
    text = (
        FULL
        + "[module_algo_map.FeedForward]\ndim = 8\nalpha = 3\n[module_algo_map.ResnetBlock2D]\ndim = 32\n"
        + "[module_algo_map.CLIPMLP]\ndim = 4\n[module_algo_map.CLIPAttention]\nalpha = 2\n"
    )
    args = '"conv_dim=16" "constraint=0.01"'
    a = plan_of(expressible(_convert(tmp_path, text, "diag-oft", args=args)), tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint) == ("diag-oft", 16, 0.01)
    shown = [(b.pattern, b.rank, b.conv_rank, b.alpha) for b in a.blocks]
    assert shown == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 8, 8, 0.01),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 32, 32, 0.01),
    ]
    assert [(b.pattern, b.rank) for b in a.text_encoder_blocks] == [(r"(?:^|\.)(?:fc1|fc2)$", 4)]


def test_diag_oft_conv_dim_beside_entries_sizes_each_layer_as_lycoris(tmp_path):
    """algo=diag-oft with conv_dim (8) other than network_dim (16) and a preset file's entries (was DBS403):
    create_single_module gives a layer its entry's dim, else network_dim (a Linear, a 1x1 convolution) or
    conv_dim (a k x k convolution). The ResNets' entry without a dim (its own constraint) is two blocks, its
    3x3 convolutions at 8 and its time_emb_proj / 1x1 shortcut at 16; the MLP's entry at its dim; the k x k
    convolutions no entry reaches at conv_dim after them (tests/runtime/test_lycoris_algo_maps.py compares
    every layer's blocks with lycoris-lora 4.1.3's network)."""
    text = (
        FULL + "[module_algo_map.FeedForward]\ndim = 4\n[module_algo_map.ResnetBlock2D]\nconstraint = 0.001\n"
    )
    for algo in ("diag-oft", "boft"):
        (tmp_path / algo).mkdir()
        a = plan_of(expressible(_convert(tmp_path / algo, text, algo)), tmp_path / algo).adapter
        assert (a.kind, a.oft_block_size) == (algo, 16)
        shown = [(b.pattern, b.rank, b.alpha) for b in a.blocks]
        assert shown == [
            (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 4, 0.0),
            (r"(?:^|\.)(?:conv1|conv2)$", 8, 0.001),
            (r"(?:^|\.)(?:time_emb_proj|conv_shortcut)$", 16, 0.001),
            (r"(?:^|\.)(?:conv_in|conv_out|conv1|conv2|(?:down|up)samplers\.\d+\.conv)$", 8, 0.0),
        ]


# LoKr at lycoris-lora's full-matrix idiom on the attention and MLP, the ResNets at the network's dim
FULL_LOKR = (
    FULL
    + """
[module_algo_map.CrossAttention]
  algo = "lokr"
  dim = 10000000000000
[module_algo_map.FeedForward]
  algo = "lokr"
  dim = 100000
  alpha = 1
[module_algo_map.ResnetBlock2D]
  algo = "lokr"
  dim = 100000
"""
)


def test_huge_lokr_dims_are_full_factors_at_the_block_bound(tmp_path):
    """A LoKr block keeps its dim up to LoKr's bound of 100000 (LokrModule's split and scale at that dim on
    any width); above it (10^13) every layer is full in both factors at scale 1, as at 100000 (issue 12)."""
    outcome = expressible(_convert(tmp_path, FULL_LOKR, "lokr"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha, a.factor) == ("lokr", 16, 8.0, 8, 4.0, -1)
    assert _blocks(a.blocks) == [
        (r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 100000, 100000.0, 0, 1.0),
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 100000, 1.0, 0, 1.0),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 100000, 8.0, 100000, 4.0),
    ]
    assert a.text_encoder_blocks == ()


def test_huge_dims_keep_their_rank_on_lokr_only(tmp_path):
    """With factor 4 GEGLU's 10240-wide projection splits 4 x 2560 (full only from dim 1280): a LoKr dim of
    100000 is a block at 100000 (no width assumption); LoKr's 10^13 with rs_lora scales a full layer by
    sqrt(dim): a block at 10^13 (was DBS403; tests/runtime/test_lycoris_lokr_huge_rs_lora.py)."""
    text = FULL + "[module_algo_map.FeedForward]\ndim = 100000\n"
    outcome = _convert(tmp_path, text, "lokr", args='"factor=4"')
    assert [b.rank for b in plan_of(expressible(outcome), tmp_path).adapter.blocks] == [100000]
    (tmp_path / "rs").mkdir()
    huge = text.replace("100000", "10000000000000")
    outcome = _convert(tmp_path / "rs", huge, "lokr", args='"rs_lora=True"')
    a = plan_of(expressible(outcome), tmp_path / "rs").adapter
    assert a.lokr_rank_stabilized and [b.rank for b in a.blocks] == [10**13]


def test_dims_above_1024_on_locon_and_loha(tmp_path):
    """LyCORIS's LoConModule and LohaModule train a pair at an entry's dim whatever the layer's width (here
    2048 on 320- to 1280-wide layers, 4096 on CLIP's MLP): blocks at those ranks, up to the blocks' bound of
    100000; above it (LoKr's 10^13 idiom on a LoHa) a pair that large is not expressed (DBS403)."""
    text = (
        FULL + "[module_algo_map.FeedForward]\ndim = 2048\n[module_algo_map.CLIPMLP]\ndim = 4096\nalpha = 1\n"
    )
    for algo in ("locon", "loha"):
        (tmp_path / algo).mkdir()
        a = plan_of(expressible(_convert(tmp_path / algo, text, algo)), tmp_path / algo).adapter
        assert _blocks(a.blocks) == [(r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 2048, 8.0, 0, 1.0)]
        assert _blocks(a.text_encoder_blocks) == [(r"(?:^|\.)(?:fc1|fc2)$", 4096, 1.0, 0, 1.0)]
        assert (
            a.kind == ("lora" if algo == "locon" else "loha") and a.params["unet"] > a.params["text_encoder"]
        )
    (tmp_path / "huge").mkdir()
    outcome = _convert(tmp_path / "huge", text.replace("2048", "10000000000000"), "loha")
    assert "DBS403" in codes(outcome) and "trains a pair at that rank" in messages(outcome, "DBS403")


def test_unknown_algorithm_name_stops_kohya(tmp_path):
    """LyCORIS looks the entry's algo up in network_module_dict as written: `LoKr` is a KeyError."""
    outcome = _convert(tmp_path, FULL + '[module_algo_map.FeedForward]\nalgo = "LoKr"\n', "lokr")
    assert "DBS402" in codes(outcome) and "KeyError" in messages(outcome, "DBS402")


def test_argument_passed_twice_stops_kohya(tmp_path):
    outcome = _convert(tmp_path, FULL + "[module_algo_map.FeedForward]\ndropout = 0.1\n")
    assert "DBS402" in codes(outcome) and "`dropout`" in messages(outcome, "DBS402")


def test_unreached_bad_entry_is_inert(tmp_path):
    """An entry is read only for the layers it reaches: an unknown algo under a class kohya's SD model has not
    changes nothing."""
    outcome = expressible(_convert(tmp_path, FULL + '[module_algo_map.T5Block]\nalgo = "nope"\n'))
    assert plan_of(outcome, tmp_path).adapter.blocks == ()


def test_keys_the_module_class_never_reads_are_inert(tmp_path):
    """LoConModule takes no `factor`: the entry's key lands in its **kwargs (ignored, DBS405); its dim still
    counts."""
    text = FULL + '[module_algo_map.ResnetBlock2D]\nalgo = "lora"\ndim = 4\nfactor = 8\n'
    outcome = expressible(_convert(tmp_path, text))
    assert "DBS405" in codes(outcome) and "module_algo_map.ResnetBlock2D.factor" in messages(
        outcome, "DBS405"
    )
    assert [b.rank for b in plan_of(outcome, tmp_path).adapter.blocks] == [4]


def test_options_equal_to_the_networks_change_nothing(tmp_path):
    """An entry's `factor` / `use_tucker` equal to what create_network hands every module (network_args
    factor=8, use_tucker off) is the network's own: only the entry's dim makes a block."""
    text = FULL + "[module_algo_map.FeedForward]\nfactor = 8\nuse_tucker = false\ndim = 4\n"
    outcome = expressible(_convert(tmp_path, text, "lokr", args='"factor=8"'))
    a = plan_of(outcome, tmp_path).adapter
    assert a.factor == 8 and [(b.rank, b.factor) for b in a.blocks] == [(4, 0)]
    (tmp_path / "other").mkdir()
    outcome = expressible(_convert(tmp_path / "other", text, "lokr", args='"factor=4"'))
    a = plan_of(outcome, tmp_path / "other").adapter
    assert a.factor == 4 and [(b.rank, b.factor) for b in a.blocks] == [(4, 8)]


def test_sdxl_maps_name_kohyas_classes_and_paths(tmp_path):
    """On SDXL the entries name kohya's own U-Net classes and paths (original layout: `CrossAttention`,
    `out.2`); the blocks name diffusers' paths, the model dbspec trains, and one text block covers both CLIP
    encoders' layers."""
    text = """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["out.2"]
text_encoder_target_module = ["CLIPMLP"]
[module_algo_map.CrossAttention]
dim = 32
alpha = 16
[name_algo_map.'out\\.2']
dim = 4
[module_algo_map.CLIPMLP]
dim = 8
"""
    (tmp_path / "p.toml").write_text(text, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command="accelerate launch sdxl_train_network.py --pretrained_model_name_or_path="
        "stabilityai/stable-diffusion-xl-base-1.0 --train_data_dir=x --resolution=1024 "
        "--network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
        '--network_args "algo=lokr" "preset=p.toml" --learning_rate=1e-4 --max_train_steps=200',
    )
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert a.kind == "lokr" and a.conv_targets == ("conv_out",)
    assert _blocks(a.blocks) == [
        (r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 32, 16.0, 0, 1.0),
        (r"(?:^|\.)(?:conv_out)$", 16, 8.0, 4, 8.0),  # conv_dim / conv_alpha default to dim / alpha
    ]
    assert _blocks(a.text_encoder_blocks) == [(r"(?:^|\.)(?:fc1|fc2)$", 8, 8.0, 0, 1.0)]


# LoKr on the U-Net, LoRA on CLIP's layers (as lycoris-lora's example preset mixes them)
LOKR_UNET_LORA_TEXT = (
    FULL
    + """
[module_algo_map.CrossAttention]
  algo = "lokr"
  dim = 8
[module_algo_map.CLIPAttention]
  algo = "lora"
  dim = 8
  alpha = 1
[module_algo_map.CLIPMLP]
  algo = "lora"
  dim = 4
  use_tucker = true
"""
)


def test_text_encoder_entries_change_nothing_with_network_train_unet_only(tmp_path):
    """train_network.py hands create_network the text encoder whatever --network_train_unet_only says, and
    LycorisNetworkKohya builds CLIP's layers with the entries' algorithm, but apply_to(text_encoder, unet,
    False, True) empties text_encoder_loras: those modules are never applied or trained, so their algorithm,
    options and dims change nothing (issue 12). Without the flag they train: CLIP's LoRA layers would be
    blocks of kind lora, the CLIPMLP entry's use_tucker ignored (LoConModule builds no Tucker form on a
    Linear)."""
    outcome = expressible(_convert(tmp_path, LOKR_UNET_LORA_TEXT, "lokr", args="--network_train_unet_only"))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("lokr", 16, 8.0) and not plan.train_text_encoder
    assert _blocks(a.blocks) == [(r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$", 8, 8.0, 0, 1.0)]
    assert a.text_encoder_blocks == ()
    said = messages(outcome, "DBS405")
    assert "module_algo_map.CLIPAttention" in said and "module_algo_map.CLIPMLP" in said
    assert "network_train_unet_only" in said
    (tmp_path / "both").mkdir()
    outcome = _convert(tmp_path / "both", LOKR_UNET_LORA_TEXT, "lokr")
    assert "DBS403" not in codes(outcome), messages(outcome, "DBS403")
    assert "module_algo_map.CLIPMLP.use_tucker" in messages(outcome, "DBS405")
    text = plan_of(outcome, tmp_path / "both").adapter.text_encoder_blocks
    assert {(b.kind, b.rank) for b in text} == {("lora", 8), ("lora", 4)}


def test_unknown_algorithm_on_dropped_text_layers_still_stops_kohya(tmp_path):
    """LycorisNetworkKohya builds the text encoder's modules before apply_to drops them: an unknown algo there
    is still kohya's KeyError."""
    text = FULL + '[module_algo_map.CLIPMLP]\nalgo = "LoRA"\n'
    outcome = _convert(tmp_path, text, "lokr", args="--network_train_unet_only")
    assert "DBS402" in codes(outcome) and "KeyError" in messages(outcome, "DBS402")


# LoKr network (algo=lokr, factor=8) on the attention and CLIP's attention, LoCon on the ResNets and LoHa on
# the transformers' and CLIP's MLPs at their own dims (issue 12: several algorithms in one run)
MIXED = (
    FULL
    + """
[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 8
alpha = 4
[module_algo_map.FeedForward]
algo = "loha"
dim = 4
alpha = 2
[module_algo_map.CLIPMLP]
algo = "loha"
dim = 2
"""
)


def test_mixed_algorithms_are_blocks_of_their_kind(tmp_path):
    """Each map entry with another algorithm is a block of that kind at the entry's dim / alpha (the
    ResNets' 3x3 convolutions at the entry's dim too: create_single_module's `dim or conv_lora_dim`); the
    rest keeps the network's LoKr and its factor, as lycoris-lora's kohya network builds them
    (tests/runtime/test_lycoris_algo_maps.py checks the built layers)."""
    outcome = expressible(_convert(tmp_path, MIXED, "lokr", '"factor=8"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.factor, a.conv_rank, a.conv_alpha) == ("lokr", 16, 8.0, 8, 8, 4.0)
    kinds = {b.kind: (b.rank, b.alpha, b.conv_rank, b.conv_alpha) for b in a.blocks}
    assert kinds == {"loha": (4, 2.0, 0, 1.0), "lora": (8, 4.0, 8, 4.0)}
    loha = next(b for b in a.blocks if b.kind == "loha")
    assert re.search(loha.pattern, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")
    assert not re.search(loha.pattern, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert [(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks] == [
        ("loha", 2, 8.0)
    ]  # alpha: the network's
    assert re.search(a.text_encoder_blocks[0].pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc1")


# the ResNets LoHa and the downsamplers LoKr, each entry with its own use_tucker, the transformers' MLPs LoHa
# with one that reaches no k x k convolution, beside a LoCon network
OWN_TUCKERS = (
    FULL
    + """
[module_algo_map.ResnetBlock2D]
algo = "loha"
dim = 8
use_tucker = true
[module_algo_map.Downsample2D]
algo = "lokr"
dim = 4
use_tucker = true
[module_algo_map.FeedForward]
algo = "loha"
dim = 4
use_tucker = true
"""
)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_mixed_loha_and_lokr_entries_own_tucker_are_their_blocks(tmp_path, model):
    """A LoHa / LoKr entry's own use_tucker beside other algorithms (was DBS403): LohaModule and
    LokrModule build their Tucker form on the entry's k x k convolutions, its block of kind loha / lokr
    `tucker = "on"` (the adapter's Tucker form stays off: tests/runtime/test_lycoris_mixed_file.py checks
    the layers against lycoris-lora 4.1.3); on an entry reaching linears only it changes nothing (DBS405).
    SDXL names kohya's same classes. A LoKr entry's own factor beside other kinds is its block's `factor`;
    entries' own use_tucker on a GLoRA / DyLoRA network alike (their blocks' `tucker`, issue 12)."""
    if model == "sdxl":
        (tmp_path / "p.toml").write_text(OWN_TUCKERS, encoding="utf-8")
        images(tmp_path / "x" / "10_ohwx", 3, (1024, 1024))
        outcome = kohya(
            tmp_path,
            command="accelerate launch sdxl_train_network.py --pretrained_model_name_or_path="
            "stabilityai/stable-diffusion-xl-base-1.0 --train_data_dir=x --resolution=1024 "
            "--network_module=lycoris.kohya --network_dim=16 --network_alpha=8 "
            '--network_args "algo=locon" "conv_dim=8" "conv_alpha=4" "preset=p.toml" '
            "--learning_rate=1e-4 --max_train_steps=200",
        )
    else:
        outcome = _convert(tmp_path, OWN_TUCKERS, "locon")
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert (a.kind, a.tucker) == ("lora", False)
    own = {(b.kind, b.rank, b.conv_rank, b.tucker) for b in a.blocks}
    # the downsamplers hold a convolution alone: the block's linear rank the network's
    assert own == {("loha", 8, 8, "on"), ("lokr", 16, 4, "on"), ("loha", 4, 0, "adapter")}, own
    (lokr,) = [b for b in a.blocks if b.kind == "lokr"]
    assert re.search(lokr.pattern, "down_blocks.1.downsamplers.0.conv")
    assert not re.search(lokr.pattern, "down_blocks.1.resnets.0.conv1")
    assert "module_algo_map.FeedForward.use_tucker" in messages(outcome, "DBS405")
    (tmp_path / "factor").mkdir()
    text = OWN_TUCKERS.replace('algo = "lokr"\n', 'algo = "lokr"\nfactor = 4\n')
    outcome = expressible(_convert(tmp_path / "factor", text, "locon"))  # was DBS403 (issue 12)
    assert [b.factor for b in plan_of(outcome, tmp_path / "factor").adapter.blocks if b.kind == "lokr"] == [4]
    for algo in ("glora", "dylora"):  # their blocks' `tucker` alike (was DBS403, before a converter crash)
        (tmp_path / algo).mkdir()
        outcome = expressible(_convert(tmp_path / algo, OWN_TUCKERS, algo))
        blocks = plan_of(outcome, tmp_path / algo).adapter.blocks
        assert {(b.kind, b.tucker) for b in blocks if b.tucker != "adapter"} == {
            ("loha", "on"),
            ("lokr", "on"),
        }


def test_mixed_algorithms_on_a_glora_network(tmp_path):
    """A GLoRA network's entries of other algorithms (was DBS403) are blocks of their kind beside the GLoRA
    layers (tests/runtime/test_lycoris_algo_maps.py checks the built layers, trains, resumes and loads the
    export in lycoris-lora); its module_dropout (was DBS403) every kind's layers draw as their LyCORIS class
    does (tests/runtime/test_lycoris_mixed_module_dropout.py); its bypass_mode (was DBS403, a spec's
    DBS578) the adapter's `bypass`, which its LoCon / LoHa blocks take as LyCORIS's modules do, their bypass
    forward their default one (tests/runtime/test_lycoris_glora_bypass_entries.py); with its dropout too
    (was DBS403) GLoRA's bypass_dropout and its blocks' output_dropout
    (tests/runtime/test_lycoris_glora_bypass_dropout_entries.py); with its rank_dropout (was DBS403) the
    adapter's, its blocks in rank_dropout_form "lycoris_bypass"
    (tests/runtime/test_lycoris_glora_bypass_rank_dropout_entries.py); with dora_wd beside them kohya's file
    does not compute what it trained (their bypass forward never decomposes): DBS402, was DBS403."""
    outcome = expressible(_convert(tmp_path, MIXED, "glora"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("glora", 16, 8.0)
    assert {b.kind for b in a.blocks} == {"loha", "lora"} and [b.kind for b in a.text_encoder_blocks] == [
        "loha"
    ]
    (tmp_path / "drop").mkdir()
    outcome = expressible(_convert(tmp_path / "drop", MIXED, "glora", '"module_dropout=0.1"'))
    assert plan_of(outcome, tmp_path / "drop").adapter.module_dropout == 0.1
    (tmp_path / "bypass").mkdir()
    outcome = expressible(_convert(tmp_path / "bypass", MIXED, "glora", '"bypass_mode=True"'))
    a = plan_of(outcome, tmp_path / "bypass").adapter
    assert a.bypass and all(b.bypass for b in (*a.blocks, *a.text_encoder_blocks))
    (tmp_path / "dropout").mkdir()
    outcome = _convert(tmp_path / "dropout", MIXED, "glora", '"bypass_mode=True" "dropout=0.1"')
    a = plan_of(expressible(outcome), tmp_path / "dropout").adapter
    assert (a.bypass, a.bypass_dropout, a.output_dropout) == (True, 0.1, 0.1)
    (tmp_path / "ranks").mkdir()
    outcome = _convert(tmp_path / "ranks", MIXED, "glora", '"bypass_mode=True" "rank_dropout=0.1"')
    a = plan_of(expressible(outcome), tmp_path / "ranks").adapter
    assert (a.bypass, a.rank_dropout, a.rank_dropout_form) == (True, 0.1, "lycoris_bypass")
    (tmp_path / "dora").mkdir()
    outcome = _convert(tmp_path / "dora", MIXED, "glora", '"bypass_mode=True" "dora_wd=True"')
    said = messages(outcome, "DBS402")
    assert "bypass_mode and weight decomposition" in said and "dora_scale gets no gradient" in said, said


def test_mixed_algorithms_weight_decompose(tmp_path):
    """LyCORIS's weight decomposition in a run of several algorithms on SD 1.x/2.x (issue 12): the network's
    dora_wd (was DBS403 / a spec's DBS578) is the adapter's `dora`, which LyCORIS hands every LoCon, LoHa
    and LoKr module (an entry's own weight_decompose false its block's dora "off"), on its wd_on_output
    axis; entries' own weight_decompose beside other algorithms (was DBS403 / DBS583) their blocks' dora
    (tests/runtime/test_lycoris_algo_maps.py, test_lycoris_block_dora.py check the layers against
    lycoris-lora 4.1.3). On a GLoRA or DyLoRA network, whose adapter takes no dora while LyCORIS hands
    dora_wd to its LoCon / LoHa entries (was DBS403), tested separately below."""
    text = MIXED.replace("dim = 4\nalpha = 2\n", "dim = 4\nalpha = 2\nweight_decompose = false\n")
    outcome = expressible(_convert(tmp_path, text, "lokr", '"dora_wd=True" "wd_on_output=False"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.dora_form) == ("lokr", True, "input", "lycoris")
    assert {(b.kind, b.dora) for b in a.blocks} == {("loha", "off"), ("lora", "adapter")}
    assert [(b.kind, b.dora) for b in a.text_encoder_blocks] == [("loha", "adapter")]
    (tmp_path / "own").mkdir()
    text = MIXED.replace("dim = 8\nalpha = 4\n", "dim = 8\nalpha = 4\nweight_decompose = true\n")
    a = plan_of(expressible(_convert(tmp_path / "own", text, "lokr")), tmp_path / "own").adapter
    assert not a.dora and {(b.kind, b.dora) for b in a.blocks} == {("loha", "adapter"), ("lora", "on")}


@pytest.mark.parametrize("algo", ["glora", "dylora"])
def test_glora_and_dylora_networks_dora_wd_is_their_entries_blocks_dora(tmp_path, algo):
    """A GLoRA or DyLoRA network's dora_wd beside LoCon / LoHa entries (was DBS403: the adapter has no
    dora): create_single_module hands it to every module, GLoRAModule and DyLoraModule take it and never read
    it, LoConModule and LohaModule decompose; so each LoCon / LoHa block's own `dora` (an entry's
    weight_decompose false keeps its block off), on wd_on_output's axis (the blocks' `dora_axis`: the
    adapter has none), the adapter's own layers undecomposed. An entry's own weight_decompose / wd_on_out
    on such a network is its block's too (was DBS403 "unknown key dora"). tests/runtime/
    test_lycoris_algo_maps.py (GLoRA) and test_lycoris_mixed_dylora.py (DyLoRA) check the decomposed layers
    against lycoris-lora 4.1.3's."""
    off = MIXED.replace("dim = 8\nalpha = 4\n", "dim = 8\nalpha = 4\nweight_decompose = false\n")
    outcome = expressible(_convert(tmp_path, off, algo, '"dora_wd=True" "wd_on_output=False"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form) == (algo, False, "lycoris")
    assert {(b.kind, b.dora, b.dora_axis) for b in a.blocks} == {
        ("loha", "on", "input"),
        ("lora", "adapter", "adapter"),  # the entry's weight_decompose false: the adapter's, none
    }
    assert [(b.kind, b.dora, b.dora_axis) for b in a.text_encoder_blocks] == [("loha", "on", "input")]
    assert "network_args dora_wd" not in outcome.conversion.reports  # read: no inert record
    (tmp_path / "own").mkdir()  # an entry's own weight_decompose, no dora_wd
    own = MIXED.replace("dim = 8\nalpha = 4\n", "dim = 8\nalpha = 4\nweight_decompose = true\n")
    a = plan_of(expressible(_convert(tmp_path / "own", own, algo)), tmp_path / "own").adapter
    assert {(b.kind, b.dora) for b in a.blocks} == {("loha", "adapter"), ("lora", "on")}
    (tmp_path / "none").mkdir()  # no LoCon / LoHa / LoKr layer: dora_wd reaches none (inert)
    alone = FULL + "[module_algo_map.FeedForward]\ndim = 4\n"
    outcome = expressible(_convert(tmp_path / "none", alone, algo, '"dora_wd=True"'))
    assert plan_of(outcome, tmp_path / "none").adapter.dora_form == "peft"
    assert fate(outcome, "network_args dora_wd") == "inert"
    # decomposed blocks with module_dropout (was a spec's DBS583): LoConModule's and LohaModule's draw skips
    # the whole decomposed update (tests/runtime/test_lycoris_mixed_module_dropout.py)
    (tmp_path / "drop").mkdir()
    outcome = expressible(_convert(tmp_path / "drop", MIXED, algo, '"dora_wd=True" "module_dropout=0.1"'))
    a = plan_of(outcome, tmp_path / "drop").adapter
    assert a.module_dropout == 0.1 and {b.kind for b in a.blocks if b.dora == "on"} == {"loha", "lora"}


def test_mixed_algorithms_outside_the_kinds_are_not_expressed(tmp_path):
    """Several algorithms with options the kinds do not build alike (LoRA+ on a LoKr network) stay DBS403
    (every algorithm of lycoris-lora 4.1.3 is a block's kind now: T-LoRA on CLIP's attention too). The
    network's rs_lora converts (was DBS403): each kind's block at alpha x sqrt(dim), as LoConModule /
    LohaModule scale by alpha / sqrt(dim) (tests/runtime/test_lycoris_mixed_rs_lora.py)."""
    text = MIXED + '[module_algo_map.CLIPAttention]\nalgo = "tlora"\n'
    outcome = _convert(tmp_path, text, "lokr")
    assert "DBS403" not in codes(outcome), messages(outcome, "DBS403")
    assert "tlora" in {b.kind for b in plan_of(outcome, tmp_path).adapter.text_encoder_blocks}
    (tmp_path / "rs").mkdir()
    outcome = expressible(_convert(tmp_path / "rs", MIXED, "lokr", '"rs_lora=True"'))
    a = plan_of(outcome, tmp_path / "rs").adapter
    assert (a.kind, a.alpha, a.lokr_rank_stabilized) == ("lokr", 32.0, True)  # 8 x sqrt(16)
    kinds = {b.kind: (b.rank, b.alpha, b.conv_rank, b.conv_alpha) for b in a.blocks}
    assert kinds == {"loha": (4, 4.0, 0, 1.0), "lora": (8, 4 * 8**0.5, 8, 4 * 8**0.5)}
    # LyCORIS's LoRA+ raises the LoCon layers' lora_up on a LoKr network: a LoKr adapter has no ratio
    (tmp_path / "plus").mkdir()
    outcome = _convert(tmp_path / "plus", MIXED, "lokr", '"loraplus_lr_ratio=4"')
    assert "DBS403" in codes(outcome) and "loraplus_lr_ratio" in messages(outcome, "DBS403")


def test_full_entries_are_full_blocks(tmp_path):
    """LyCORIS's full algo on the transformers' MLPs and CLIP's attention beside a LoKr network: blocks of
    kind "full" at rank 1 (which only switches them on: FullModule never reads a dim; a huge one fits too),
    the rest as before (tests/runtime/test_lycoris_mixed_full.py trains it against lycoris-lora); the
    memory estimate counts the component's copy beside the low-rank layers."""
    text = MIXED.replace(
        '[module_algo_map.FeedForward]\nalgo = "loha"', '[module_algo_map.FeedForward]\nalgo = "full"'
    )
    text += '[module_algo_map.CLIPAttention]\nalgo = "full"\ndim = 10000000\n'
    outcome = expressible(_convert(tmp_path, text, "lokr", '"factor=8"'))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert {b.kind: b.rank for b in a.blocks} == {"full": 1, "lora": 8}
    assert sorted((b.kind, b.rank) for b in a.text_encoder_blocks) == [("full", 1), ("loha", 2)]
    full = next(b for b in a.blocks if b.kind == "full")
    assert re.search(full.pattern, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")
    (tmp_path / "loha").mkdir()
    ia3 = text.replace('algo = "full"', 'algo = "ia3"')
    (tmp_path / "ia3").mkdir()
    b = plan_of(expressible(_convert(tmp_path / "ia3", ia3, "lokr", '"factor=8"')), tmp_path / "ia3").adapter
    assert {x.kind for x in b.blocks} == {"ia3", "lora"} and {x.kind for x in b.text_encoder_blocks} == {
        "ia3",
        "loha",
    }
    mixed = plan_of(expressible(_convert(tmp_path / "loha", MIXED, "lokr", '"factor=8"')), tmp_path / "loha")
    assert a.params["unet"] > mixed.adapter.params["unet"]


@pytest.mark.parametrize("other", ["full", "ia3", "diag-oft", "boft", "glora"])
def test_network_module_dropout_beside_other_algorithms(tmp_path, other):
    """A LoKr network's module_dropout with LoCon / LoHa / `other` entries: LyCORIS hands it every module and
    each class reads it (one torch.rand(1) per training forward, the base output below it): the adapter's
    module_dropout, each kind's layers drawing as their class does (tests/runtime/
    test_lycoris_mixed_module_dropout.py against lycoris-lora's network); a LoCon network's alike, and its
    rank_dropout (was DBS403; tests/runtime/test_lycoris_rank_dropout_kinds.py)."""
    text = MIXED.replace(
        '[module_algo_map.FeedForward]\nalgo = "loha"', f'[module_algo_map.FeedForward]\nalgo = "{other}"'
    )
    outcome = expressible(_convert(tmp_path, text, "lokr", '"factor=8" "module_dropout=0.25"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout) == ("lokr", 0.25) and other in {b.kind for b in a.blocks}
    (tmp_path / "locon").mkdir()
    outcome = expressible(_convert(tmp_path / "locon", text, "locon", '"module_dropout=0.25"'))
    b = plan_of(outcome, tmp_path / "locon").adapter
    assert (b.kind, b.module_dropout, b.rank_dropout) == ("lora", 0.25, 0.0)
    (tmp_path / "rank").mkdir()  # rank_dropout (was DBS403): each kind's layers draw as their class does
    outcome = expressible(_convert(tmp_path / "rank", text, "locon", '"rank_dropout=0.25"'))
    c = plan_of(outcome, tmp_path / "rank").adapter
    assert (c.kind, c.rank_dropout, c.rank_dropout_form) == ("lora", 0.25, "lycoris")


@pytest.mark.parametrize("train_norm", ["", '"train_norm=True"'])
@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_rank_dropout_beside_entries_that_draw_it(tmp_path, algo, train_norm):
    """A DyLoRA / GLoRA network (outside bypass_mode) never reads rank_dropout itself, but LyCORIS hands it
    to its LoCon / LoHa entries' modules too, which draw it: a GLoRA network's converts (was DBS403) to the
    adapter's rank_dropout, its entries' layers drawing it as their modules do
    (tests/runtime/test_lycoris_rank_dropout_kinds.py), a DyLoRA network's too; with train_norm its
    NormModules draw it as well: the DyLoRA adapter's norm_rank_dropout, the same rate (was DBS403;
    tests/runtime/test_lycoris_dylora_norms_rank_dropout.py)."""
    outcome = _convert(tmp_path, MIXED, algo, f'"rank_dropout=0.25" {train_norm}')
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form) == (algo, 0.25, "lycoris")
    if train_norm:  # the offsets draw it too (GLoRA's norm_rank_dropout defaults to the adapter's)
        assert a.norm_rank_dropout == 0.25


def test_diag_oft_entries_are_diag_oft_blocks(tmp_path):
    """Diag-OFT entries beside a LoKr network: blocks of kind "diag-oft", the entry's dim their block-size
    hint (DiagOFTModule's lora_dim) and alpha the network's constraint (0 by default; a network
    `constraint`, which LyCORIS hands every module and the other kinds ignore, was DBS403: their alpha,
    tests/runtime/test_lycoris_network_constraint_oft_entries.py; a network `rescaled`, was DBS403, their
    `rescaled`: test_lycoris_network_rescaled_oft_entries.py); BOFT's alike; GLoRA entries blocks of kind
    "glora" at the entry's dim and alpha."""
    text = MIXED.replace(
        '[module_algo_map.FeedForward]\nalgo = "loha"', '[module_algo_map.FeedForward]\nalgo = "diag-oft"'
    )
    a = plan_of(expressible(_convert(tmp_path, text, "lokr", '"factor=8"')), tmp_path).adapter
    assert {b.kind: (b.rank, b.alpha) for b in a.blocks} == {"diag-oft": (4, 0.0), "lora": (8, 4.0)}
    glora = text.replace('algo = "diag-oft"', 'algo = "glora"')
    (tmp_path / "glora").mkdir()
    g = plan_of(expressible(_convert(tmp_path / "glora", glora, "lokr", '"factor=8"')), tmp_path / "glora")
    assert {b.kind: (b.rank, b.alpha) for b in g.adapter.blocks} == {"glora": (4, 2.0), "lora": (8, 4.0)}
    boft = text.replace('algo = "diag-oft"', 'algo = "boft"')
    (tmp_path / "boft").mkdir()
    o = plan_of(expressible(_convert(tmp_path / "boft", boft, "lokr", '"factor=8"')), tmp_path / "boft")
    assert {b.kind: (b.rank, b.alpha) for b in o.adapter.blocks} == {"boft": (4, 0.0), "lora": (8, 4.0)}
    (tmp_path / "constraint").mkdir()
    outcome = _convert(tmp_path / "constraint", text, "lokr", '"factor=8" "constraint=1e-4"')
    c = plan_of(expressible(outcome), tmp_path / "constraint").adapter
    assert {b.kind: (b.rank, b.alpha) for b in c.blocks} == {"diag-oft": (4, 1e-4), "lora": (8, 4.0)}
    (tmp_path / "rescaled").mkdir()
    outcome = _convert(tmp_path / "rescaled", text, "lokr", '"factor=8" "rescaled=True"')  # was DBS403
    r = plan_of(expressible(outcome), tmp_path / "rescaled").adapter
    assert [(b.kind, b.rescaled) for b in r.blocks if b.kind == "diag-oft"] == [("diag-oft", "on")]
    # an entry's own constraint and rescaled (was DBS403): its block's alpha and `rescaled` (DiagOFTModule's
    # `if rescaled`: the string "false" is true); runtime: test_lycoris_mixed_file (OFT_RESCALED)
    own = text.replace('algo = "diag-oft"', 'algo = "diag-oft"\nconstraint = 0.001\nrescaled = "false"')
    (tmp_path / "own").mkdir()
    w = plan_of(expressible(_convert(tmp_path / "own", own, "lokr", '"factor=8"')), tmp_path / "own")
    oft = [(b.rank, b.alpha, b.rescaled) for b in w.adapter.blocks if b.kind == "diag-oft"]
    assert oft == [(4, 0.001, "on")]
    # a negative one (was DBS403): DiagOFTModule constrains only `if constraint > 0`, the block's 0
    negative = text.replace('algo = "diag-oft"', 'algo = "diag-oft"\nconstraint = -1')
    (tmp_path / "negative").mkdir()
    n = plan_of(
        expressible(_convert(tmp_path / "negative", negative, "lokr", '"factor=8"')), tmp_path / "negative"
    )
    assert [b.alpha for b in n.adapter.blocks if b.kind == "diag-oft"] == [0.0]


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_dylora_and_glora_entries_become_their_blocks(tmp_path, algo):
    """LycorisNetworkKohya hands DyLoraModule and GLoRAModule an entry's dim / alpha (`dim or lora_dim`,
    `alpha or self.alpha`): [[adapter.blocks]] / [[adapter.text_encoder_blocks]] at those ranks (a GLoRA's
    two pairs alike; a DyLoRA's drawn in blocks of the network's block_size, `unit`). DyLoraModule never
    reads rs_lora (alphas unscaled); a dim block_size does not divide is its AssertionError (DBS402)."""
    text = re.sub(r'algo = "\w+"\n', "", RESNETS_LOW)  # each entry at the network's algorithm
    args = '"block_size=4" "rs_lora=True"' if algo == "dylora" else ""
    outcome = expressible(_convert(tmp_path, text, algo, args=args))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (algo, 16, 8.0, 8, 4.0)
    assert _blocks(a.blocks) == [
        (r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$", 32, 8.0, 0, 1.0),
        (r"(?:^|\.)(?:conv1|time_emb_proj|conv2|conv_shortcut)$", 4, 1.0, 4, 1.0),
    ]
    assert _blocks(a.text_encoder_blocks) == [(r"(?:^|\.)(?:fc1|fc2)$", 8, 8.0, 0, 1.0)]
    if algo == "glora":
        return
    assert (a.dylora_unit, a.dylora_form) == (4, "lycoris")
    (tmp_path / "odd").mkdir()
    outcome = _convert(tmp_path / "odd", text.replace("dim = 4", "dim = 6"), "dylora")
    assert "DBS402" in codes(outcome) and "not a multiple of 4" in messages(outcome, "DBS402")


def test_dylora_entries_are_dylora_blocks(tmp_path):
    """DyLoRA entries beside a LoKr network: blocks of kind "dylora" at the entry's dim and alpha, in blocks
    of the entry's own block_size, else the network's (create_network's `int(block_size or 4)`, which a
    LoKr network then reads: no DBS405); a dim that is not a multiple of it stops kohya (DyLoraModule's
    assert, DBS402); LoRA+ on a LoCon network to loraplus_ratio (LyCORIS raises `lora_up`, never DyLoRA's
    `up_list`, as dbspec's LoRA+ leaves the DyLoRA blocks' ups at the base rate, runtime/prepare.py);
    a network module_dropout, which every module class reads, to module_dropout (each layer draws as its
    class does)."""
    text = MIXED.replace(
        '[module_algo_map.FeedForward]\nalgo = "loha"\ndim = 4\nalpha = 2',
        '[module_algo_map.FeedForward]\nalgo = "dylora"\ndim = 6\nalpha = 3\nblock_size = 2',
    )
    text += '[module_algo_map.CLIPAttention]\nalgo = "dylora"\ndim = 8\n'
    outcome = expressible(_convert(tmp_path, text, "lokr", '"factor=8" "block_size=8"'))
    assert not any("block_size" in d.message for d in outcome.diagnostics if d.code == "DBS405")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lokr" and a.dylora_unit == 0
    assert {b.kind: (b.rank, b.alpha, b.unit) for b in a.blocks} == {
        "dylora": (6, 3.0, 2),
        "lora": (8, 4.0, 0),
    }
    assert sorted((b.kind, b.rank, b.alpha, b.unit) for b in a.text_encoder_blocks) == [
        ("dylora", 8, 8.0, 8),
        ("loha", 2, 8.0, 0),
    ]
    dylora = next(b for b in a.blocks if b.kind == "dylora")
    assert re.search(dylora.pattern, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")
    (tmp_path / "default").mkdir()  # no block_size anywhere: 4
    fours = text.replace("dim = 6\nalpha = 3\nblock_size = 2", "dim = 12\nalpha = 3")
    b = plan_of(expressible(_convert(tmp_path / "default", fours, "lokr")), tmp_path / "default").adapter
    assert sorted((x.kind, x.rank, x.unit) for x in b.blocks if x.kind == "dylora") == [("dylora", 12, 4)]
    (tmp_path / "odd").mkdir()
    outcome = _convert(tmp_path / "odd", fours.replace("dim = 12", "dim = 6"), "lokr")
    assert "DBS402" in codes(outcome) and "block_size" in messages(outcome, "DBS402")
    (tmp_path / "plus").mkdir()
    outcome = expressible(_convert(tmp_path / "plus", text, "locon", '"block_size=8" "loraplus_lr_ratio=4"'))
    plus = plan_of(outcome, tmp_path / "plus")
    assert plus.adapter.kind == "lora" and {b.kind for b in plus.adapter.blocks} >= {"dylora"}
    assert (plus.optimizer.loraplus_denoiser_ratio, plus.optimizer.loraplus_text_encoder_ratio) == (4.0, 4.0)
    (
        tmp_path / "drop"
    ).mkdir()  # each module draws as its class (tests/runtime/test_lycoris_mixed_module_dropout.py)
    outcome = expressible(_convert(tmp_path / "drop", text, "locon", '"block_size=8" "module_dropout=0.1"'))
    assert plan_of(outcome, tmp_path / "drop").adapter.module_dropout == 0.1


def test_dylora_entries_on_a_glora_network(tmp_path):
    """DyLoRA entries beside a GLoRA network (was DBS403 "unknown key `unit`": GLoRA blocks had none): blocks
    of kind "dylora" at the entry's dim and alpha in blocks of its own block_size, else the network's
    (create_network's `int(block_size or 4)`); a dim that is not a multiple of it stops kohya (DBS402).
    Runtime: tests/runtime/test_lycoris_algo_maps.py (SD 1.x) and test_lycoris_mixed_flow_glora.py (Flux)."""
    entry = '[module_algo_map.FeedForward]\nalgo = "dylora"\ndim = 6\nalpha = 3\nblock_size = 2\n'
    outcome = expressible(_convert(tmp_path, FULL + entry, "glora"))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "glora" and [(b.kind, b.rank, b.alpha, b.unit) for b in a.blocks] == [
        ("dylora", 6, 3.0, 2)
    ]
    assert re.search(a.blocks[0].pattern, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")
    (tmp_path / "network").mkdir()  # no block_size of its own: the network's, else 4
    own = entry.replace("block_size = 2\n", "").replace("dim = 6", "dim = 12")
    for args, unit in (('"block_size=3"', 3), ("", 4)):
        outcome = expressible(_convert(tmp_path / "network", FULL + own, "glora", args))
        assert [b.unit for b in plan_of(outcome, tmp_path / "network").adapter.blocks] == [unit]
    outcome = _convert(tmp_path / "network", FULL + own.replace("dim = 12", "dim = 6"), "glora")
    assert "DBS402" in codes(outcome) and "block_size" in messages(outcome, "DBS402")


def test_entries_of_other_algorithms_on_a_dylora_network(tmp_path):
    """A DyLoRA network (block_size 4) with LoCon / LoHa / full entries: blocks of those kinds on the DyLoRA
    adapter (their ranks not cut into blocks: an entry's dim 6 is no DBS402 there), the DyLoRA entries'
    own block_size their unit; a network module_dropout with them to module_dropout."""
    text = MIXED.replace("dim = 8\nalpha = 4", "dim = 6\nalpha = 4") + (
        '[module_algo_map.CLIPAttention]\nalgo = "full"\n[module_algo_map.Transformer2DModel]\n'
        'algo = "dylora"\ndim = 8\nblock_size = 2\n'
    )
    outcome = expressible(_convert(tmp_path, text, "dylora"))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.dylora_unit, a.dylora_form) == ("dylora", 16, 4, "lycoris")
    kinds = sorted((b.kind, b.rank, b.unit) for b in a.blocks)
    assert ("lora", 6, 0) in kinds and ("loha", 4, 0) in kinds and ("adapter", 8, 2) in kinds
    assert sorted(b.kind for b in a.text_encoder_blocks) == ["full", "loha"]
    (tmp_path / "drop").mkdir()
    outcome = expressible(_convert(tmp_path / "drop", text, "dylora", '"module_dropout=0.1"'))
    assert plan_of(outcome, tmp_path / "drop").adapter.module_dropout == 0.1


# the ResNets' entry with its own use_tucker and weight_decompose beside LoKr MLPs, on a LoCon network
TUCKER_DORA = (
    FULL
    + """
[module_algo_map.ResnetBlock2D]
algo = "{algo}"
dim = 8
use_tucker = true
weight_decompose = {wd}
[module_algo_map.FeedForward]
algo = "lokr"
dim = 4
"""
)


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_an_entrys_own_tucker_with_its_own_weight_decompose_is_its_block(tmp_path, algo):
    """A map entry's own use_tucker with its own weight_decompose on the ResNets' 3x3 convolutions beside
    other kinds (was DBS403, a spec's DBS583): LoConModule / LohaModule build the Tucker form there and
    decompose it, its block `tucker = "on"` and `dora = "on"` (tests/runtime/test_lycoris_block_dora.py
    checks such layers' outputs and gradients against lycoris-lora 4.1.3's modules); on a dora_wd network the
    entry's weight_decompose false is its block's dora "off" beside its tucker."""
    outcome = expressible(_convert(tmp_path, TUCKER_DORA.format(algo=algo, wd="true")))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.dora, a.dora_form) == ("lora", False, False, "lycoris")
    own = {(b.kind, b.rank, b.conv_rank, b.tucker, b.dora) for b in a.blocks}
    kind = "adapter" if algo == "locon" else "loha"
    assert own == {(kind, 8, 8, "on", "on"), ("lokr", 4, 0, "adapter", "adapter")}, own
    resnets = next(b for b in a.blocks if b.tucker == "on")
    assert re.search(resnets.pattern, "down_blocks.0.resnets.0.conv1")
    assert "DBS517" not in codes(outcome)  # the blocks' decomposition takes the adapter's dora_form
    (tmp_path / "off").mkdir()
    off = _convert(tmp_path / "off", TUCKER_DORA.format(algo=algo, wd="false"), "locon", '"dora_wd=True"')
    a = plan_of(expressible(off), tmp_path / "off").adapter
    assert a.dora and {(b.tucker, b.dora) for b in a.blocks} == {("on", "off"), ("adapter", "adapter")}
