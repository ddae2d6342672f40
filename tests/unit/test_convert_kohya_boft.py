"""kohya configs training LyCORIS's BOFT (`network_module = "lycoris.kohya"`, `algo=boft`): once refused
(DBS403), now [adapter] kind "boft". The expectation is what LyCORIS's kohya network does with the arguments
(lycoris/wrapper.py: network_dim is the module's lora_dim, `constraint` read as float "or 0", `rescaled` by
str_bool; lycoris/modules/boft.py: no rank or alpha), not read back from the converter."""

from __future__ import annotations

import re

import pytest

from convert_kit import SD15, codes, empty_hub_cache, errors, fate, images, kohya, messages, out_path, plan_of  # noqa: F401
from convert_kit import write

BOFT = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "lycoris.kohya"
network_dim = 8
network_alpha = 4
network_args = [{args}]
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _lycoris(tmp_path, args: str):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", BOFT.format(model=SD15, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


@pytest.mark.parametrize(
    ("args", "constraint", "rescaled"),
    [
        ('"algo=boft", "preset=attn-mlp"', 0.0, False),
        ('"algo=BOFT", "preset=attn-mlp", "constraint=1e-4", "rescaled=True"', 1e-4, True),
        ('"algo=boft", "preset=attn-mlp", "constraint=0.5", "rescaled=false"', 0.5, False),
    ],
)
def test_boft_takes_network_dim_as_its_block_size(tmp_path, args, constraint, rescaled):
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_dim") == "mapped" and fate(outcome, "network_alpha") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled) == ("boft", 8, constraint, rescaled)


def test_boft_gives_the_kxk_convolutions_conv_dims_block_size(tmp_path):
    """LyCORIS's create_single_module: a Conv2d wider than 1x1 at conv_dim, a 1x1 one and the Linears at
    network_dim (was DBS403): one block over SD 1.5's k x k convolutions (checked against lycoris-lora's
    network in tests/runtime/test_lycoris_oft_conv_dim.py)."""
    outcome = _lycoris(tmp_path, '"algo=boft", "conv_dim=4"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_block_size == 8 and [b.rank for b in a.blocks] == [4]
    pattern = a.blocks[0].pattern
    kxk = [
        "conv_in",
        "down_blocks.0.resnets.0.conv1",
        "up_blocks.1.resnets.2.conv2",
        "up_blocks.0.upsamplers.0.conv",
    ]
    kxk.append("down_blocks.2.downsamplers.0.conv")
    assert all(re.search(pattern, p) for p in kxk)
    one = [
        "down_blocks.1.resnets.0.conv_shortcut",
        "down_blocks.0.attentions.0.proj_in",
        "mid_block.resnets.0.time_emb_proj",
    ]
    assert not any(re.search(pattern, p) for p in one)


def test_the_plan_summary_shows_the_boft_options(tmp_path):
    from dbspec.plan.summary import adapter_rows

    outcome = _lycoris(tmp_path, '"algo=boft", "preset=attn-mlp", "constraint=0.25", "rescaled=True"')
    assert outcome.exit_code == 0, errors(outcome)
    rows = dict(adapter_rows(plan_of(outcome, tmp_path).adapter))
    assert rows["adapter"].startswith("boft (LyCORIS: butterfly")
    assert "block size hint 8" in rows["adapter"] and "constraint 0.25" in rows["adapter"]
    assert "rescaled" in rows["adapter"]


@pytest.mark.parametrize("algo", ["boft", "diag-oft"])
def test_bypass_mode_rotates_the_output(tmp_path, algo):
    """LyCORIS's bypass forward (str_bool: "0" is on) rotates the output, its bias too: adapter.bypass."""
    from dbspec.plan.summary import adapter_rows

    outcome = _lycoris(tmp_path, f'"algo={algo}", "preset=attn-mlp", "bypass_mode=0"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.bypass) == (algo, True)
    assert "bias too" in dict(adapter_rows(a))["  bypass"]


def test_boft_never_reads_its_dropout(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=boft", "preset=attn-mlp", "bypass_mode=True", "dropout=0.2"')
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args dropout") == "inert"


def test_diag_oft_bypass_with_a_dropout_is_invalid_as_lycoris_crashes(tmp_path):
    """lycoris-lora 4.1.3's DiagOFTModule in bypass_mode with a dropout raises on its first training forward
    (tests/runtime/test_lycoris_max_norm.py builds it): DBS402, from network_args or --network_dropout."""
    outcome = _lycoris(tmp_path, '"algo=diag-oft", "preset=attn-mlp", "bypass_mode=True", "dropout=0.2"')
    assert outcome.exit_code == 1 and "DBS402" in codes(outcome) and "DBS403" not in codes(outcome)
    assert "RuntimeError" in messages(outcome, "DBS402")
    assert fate(outcome, "network_args dropout") == "invalid"
    images(tmp_path / "cli" / "img" / "10_ohwx cat", 2, (512, 512))
    config = BOFT.format(model=SD15, args='"algo=diag-oft", "preset=attn-mlp", "bypass_mode=True"')
    write(tmp_path / "cli" / "cfg.toml", config + "network_dropout = 0.1\n")
    outcome = kohya(
        tmp_path / "cli",
        config_file=tmp_path / "cli" / "cfg.toml",
        command="accelerate launch train_network.py",
    )
    assert outcome.exit_code == 1 and "DBS402" in codes(outcome) and "DBS403" not in codes(outcome)
    assert fate(outcome, "network_dropout") == "invalid"


def test_boft_module_dropout_is_its_forward_s_draw(tmp_path):
    """ButterflyOFTModule.forward draws one torch.rand(1) per layer and training forward (its module_dropout,
    was DBS403) and never reads rank_dropout (DBS405)."""
    outcome = _lycoris(tmp_path, '"algo=boft", "preset=attn-mlp", "module_dropout=0.3", "rank_dropout=0.2"')
    assert outcome.exit_code == 0, errors(outcome)
    assert "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.fused) == ("boft", 0.3, ())
    assert fate(outcome, "network_args rank_dropout") == "inert"
    assert "never reads" in messages(outcome, "DBS405")


def test_diag_oft_module_dropout_is_its_forward_s_draw(tmp_path):
    """DiagOFTModule.forward draws one torch.rand(1) per layer and training forward (its module_dropout, was
    DBS403; tests/runtime/test_lycoris_oft_module_dropout.py)."""
    outcome = _lycoris(tmp_path, '"algo=diag-oft", "preset=attn-mlp", "module_dropout=0.3"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.fused) == ("diag-oft", 0.3, ())


def test_diag_oft_rank_dropout_is_its_rotations_dropout(tmp_path):
    """DiagOFTModule.make_weight's nn.Dropout(rank_dropout) on its rotations (was DBS403): its rank_dropout
    (tests/runtime/test_lycoris_oft_module_dropout.py); its default forward never reads `dropout` (DBS405)."""
    args = '"algo=diag-oft", "preset=attn-mlp", "rank_dropout=0.3", "module_dropout=0.1", "dropout=0.2"'
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.module_dropout, a.bypass) == ("diag-oft", 0.3, 0.1, False)
    assert fate(outcome, "network_args dropout") == "inert"
    assert "only in bypass_mode" in messages(outcome, "DBS405")


def test_diag_oft_bypass_never_reads_its_rank_dropout(tmp_path):
    """DiagOFTModule's bypass forward never calls make_weight's rank dropout: DBS405."""
    outcome = _lycoris(tmp_path, '"algo=diag-oft", "preset=attn-mlp", "bypass_mode=True", "rank_dropout=0.3"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank_dropout, a.bypass) == (0.0, True)
    assert fate(outcome, "network_args rank_dropout") == "inert"
    assert "default forward only" in messages(outcome, "DBS405")


def test_ia3_module_dropout_is_its_forward_s_draw_and_the_rest_unread(tmp_path):
    """IA3Module.forward draws one torch.rand(1) per layer and training forward (its module_dropout, was
    DBS403; tests/runtime/test_lycoris_switches.py); it never reads rank_dropout or `dropout` (DBS405)."""
    args = '"algo=ia3", "preset=attn-mlp", "module_dropout=0.3", "rank_dropout=0.2", "dropout=0.1"'
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout) == ("ia3", 0.3, 0.0)
    assert fate(outcome, "network_args rank_dropout") == "inert"
    assert fate(outcome, "network_args dropout") == "inert"
    assert "IA3Module" in messages(outcome, "DBS405")
