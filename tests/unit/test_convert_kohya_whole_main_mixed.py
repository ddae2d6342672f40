"""lycoris.kohya `algo=full` / `algo=ia3` networks whose preset file gives some layers another algorithm
(issue 12; was DBS403: a full / IA^3 adapter's [[adapter.blocks]] held a learning-rate scale alone): each map
entry of another algorithm becomes a block of that `kind` at the entry's dim and alpha (spec ScaleBlock,
TextEncoderBlock), the rest the network's FullModule / IA3Module; `--scale_weight_norms` scales the
entries' LoCon / LoHa / LoKr / OFT layers (LyCORIS's FullModule and IA3Module keep the base apply_max_norm).
What the blocks do not carry stays DBS403. tests/runtime/test_lycoris_whole_main_mixed.py builds the same
files with lycoris-lora 4.1.3 and checks every layer's class, rank and scale."""

from __future__ import annotations

import pytest
from convert_kit import SD15, codes, expressible, fate, images, kohya, messages, plan_of

MIXED = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[name_algo_map.conv_in]
algo = "lora"
[module_algo_map.CLIPMLP]
algo = "loha"
dim = 2
"""


def _convert(tmp_path, algo: str, args: str = "", preset: str = MIXED):
    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=8 "
        "--network_alpha=4 "
        f'--network_args "algo={algo}" "conv_dim=4" "conv_alpha=1" "preset=p.toml" {args} '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_entries_of_other_algorithms_are_blocks_of_their_kind(tmp_path, algo):
    outcome = expressible(_convert(tmp_path, algo))
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo
    # LoCon on the ResNets (their linears at the entry's dim 4, alpha 2, their 3x3 convolutions alike), LoRA
    # on conv_in at the network's dims (8 / 4 on the linears, conv_dim 4 / conv_alpha 1), LoHa on the MLPs
    blocks = {(b.kind, b.rank, b.alpha, b.conv_rank, b.conv_alpha) for b in a.blocks}
    assert blocks == {("lora", 4, 2.0, 4, 2.0), ("lora", 8, 4.0, 4, 1.0), ("loha", 2, 4.0, 0, 1.0)}
    assert [(b.kind, b.rank, b.alpha) for b in a.text_encoder_blocks] == [("loha", 2, 4.0)]
    # the network's own layers: the ResNets' and conv_in's convolutions are the blocks', the rest full / IA^3
    assert {"conv_in", "conv1", "conv2", "conv_out"} <= set(a.conv_targets)
    assert a.max_norm == 0.0 and fate(outcome, "network_args") == "mapped"


def test_max_norm_scales_the_entries_layers(tmp_path):
    a = plan_of(expressible(_convert(tmp_path, "full", "--scale_weight_norms=1.5")), tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == ("full", 1.5, "lycoris")


def test_entries_of_the_network_algorithm_alone_leave_max_norm_inert(tmp_path):
    preset = MIXED.replace('algo = "locon"', 'algo = "ia3"').replace('algo = "loha"', 'algo = "ia3"')
    preset = preset.replace('algo = "lora"', 'algo = "ia3"')
    outcome = expressible(_convert(tmp_path, "ia3", "--scale_weight_norms=1.5", preset))
    a = plan_of(outcome, tmp_path).adapter
    assert a.max_norm == 0.0 and not a.blocks and fate(outcome, "scale_weight_norms") == "inert"


def test_ia3_bypass_mode_reaches_the_entries(tmp_path):
    """IA^3's bypass_mode beside the entries (was DBS403): the adapter's `bypass`, which its blocks' layers
    take as LyCORIS hands every module the network's (tests/runtime/test_lycoris_whole_main_bypass.py)."""
    outcome = expressible(_convert(tmp_path, "ia3", '"bypass_mode=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.bypass) == ("ia3", True) and {b.kind for b in a.blocks} == {"lora", "loha"}


def test_dora_wd_decomposes_the_entries_layers(tmp_path):
    """LyCORIS hands the network's dora_wd to every module: its LoCon / LoHa entries decompose (their blocks'
    `dora`), FullModule never reads it (not "ignored": the entries read it)."""
    outcome = expressible(_convert(tmp_path, "full", '"dora_wd=True"'))
    assert not codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert {(b.kind, b.dora) for b in (*a.blocks, *a.text_encoder_blocks)} == {("lora", "on"), ("loha", "on")}
    assert a.dora_form == "lycoris"


@pytest.mark.parametrize(
    ("algo", "args", "preset", "said"),
    [
        # (the network's rank_dropout converts, was DBS403: test_convert_kohya_rank_dropout_kinds.py; IA^3's
        # bypass_mode beside the entries too: test_convert_kohya_whole_main_mixed_flow.py)
        # (a LoKr entry's own factor and switches, use_scalar, rs_lora convert, was DBS403:
        # test_convert_kohya_mixed_own_opts.py)
        # (a Diag-OFT / BOFT entry's own rescaled converts, was DBS403: test_convert_kohya_mixed_own_opts.py)
        # a LoHa entry's own rank_dropout_scale: a full adapter's blocks carry no rank-dropout rescale
        (
            "full",
            '"rank_dropout=0.1"',
            MIXED.replace(
                'algo = "loha"\ndim = 2\n', 'algo = "loha"\ndim = 2\nrank_dropout_scale = true\n', 1
            ),
            "own rank_dropout_scale",
        ),
    ],
)
def test_what_the_blocks_do_not_carry_is_refused(tmp_path, algo, args, preset, said):
    outcome = _convert(tmp_path, algo, args, preset)
    assert "DBS403" in codes(outcome)
    assert said in messages(outcome, "DBS403")


@pytest.mark.parametrize("algo", ["full", "ia3"])
def test_unet_at_rate_zero_holds_every_kind(tmp_path, algo):
    """`unet_lr 0` (kohya leaves the U-Net's modules out of its optimizer, held_unet.py): every block at
    lr_scale 0, its own kind's too, and a last one over every other module (the network's full / IA^3)."""
    outcome = expressible(_convert(tmp_path, algo, "--unet_lr=0 --text_encoder_lr=1e-4"))
    a = plan_of(outcome, tmp_path).adapter
    assert [b.kind for b in a.blocks] == ["lora", "loha", "lora", "adapter"] and a.blocks[-1].pattern == ""
    assert {b.lr_scale for b in a.blocks} == {0.0}
