"""kohya configs training LyCORIS through `network_module = "lycoris.kohya"` with `use_scalar` and LoKr's
`full_matrix` (issue 12): once refused as not expressible, now [adapter] `scalar` and `full_matrix`. The
expectation is what LyCORIS's kohya network (lycoris/kohya.py: `str_bool` on each argument, only "false" in
any case off; lycoris/modules/lokr.py: full_matrix overrides decompose_both and use_tucker) does with the
arguments, not read back from the converter."""

from __future__ import annotations

import re

import tomllib

import pytest

from dbspec.plan.summary import adapter_rows

from convert_kit import SD15, empty_hub_cache, errors, fate, images, kohya, out_path, plan_of, write  # noqa: F401

# kohya_ss's LyCORIS LoKr preset as its GUI writes it: a modest rank with the full-matrix switch on.
LOKR_FULL = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "lycoris.kohya"
network_dim = 8
network_alpha = 4
network_args = [{args}]
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW8bit"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _lycoris(tmp_path, args: str):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", LOKR_FULL.format(model=SD15, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


@pytest.mark.parametrize(
    ("args", "full"),
    [
        ('"algo=lokr", "preset=full", "conv_dim=4", "conv_alpha=1", "factor=8", "full_matrix=True"', True),
        ('"algo=lokr", "full_matrix=1"', True),  # str_bool: only "false" is false
        ('"algo=lokr", "full_matrix=False"', False),
        ('"algo=lokr", "full_matrix=FALSE"', False),
    ],
)
def test_lokr_full_matrix_maps_to_the_adapter_switch(tmp_path, args, full):
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.full_matrix, adapter.rank) == ("lokr", full, 8)
    assert adapter.lokr_unit_scale  # both factors full: scale 1, as LyCORIS's LokrModule


def test_full_matrix_overrides_decompose_both_and_tucker(tmp_path):
    """LokrModule with full_matrix never splits a factor: decompose_both and use_tucker change nothing, so
    neither lands in the spec and the plan shows them off."""
    args = '"algo=lokr", "conv_dim=4", "decompose_both=True", "use_tucker=True", "full_matrix=True"'
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    written = tomllib.loads(out_path(tmp_path).read_text(encoding="utf-8"))["adapter"]
    assert written["full_matrix"] is True and "decompose_both" not in written and "tucker" not in written
    adapter = plan_of(outcome, tmp_path).adapter
    assert adapter.full_matrix and not adapter.decompose_both and not adapter.tucker


@pytest.mark.parametrize(
    ("algo", "kind"),
    [("locon", "lora"), ("lora", "lora"), ("loha", "loha"), ("lokr", "lokr")],
)
@pytest.mark.parametrize("value", ["True", "true", "1"])
def test_use_scalar_maps_on_every_algo(tmp_path, algo, kind, value):
    outcome = _lycoris(tmp_path, f'"algo={algo}", "conv_dim=4", "conv_alpha=1", "use_scalar={value}"')
    assert outcome.exit_code == 0, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.scalar, adapter.conv_rank) == (kind, True, 4)


def test_use_scalar_false_is_off(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=loha", "use_scalar=False"')
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.scalar is False


@pytest.mark.parametrize("algo, kind", [("locon", "lora"), ("loha", "loha"), ("lokr", "lokr")])
def test_use_scalar_with_dora_maps_to_lycoris_weight_decomposition_with_a_scalar(tmp_path, algo, kind):
    """LyCORIS renormalises the scaled update (tests/runtime/test_lycoris_scalar_dora.py)."""
    outcome = _lycoris(tmp_path, f'"algo={algo}", "dora_wd=True", "use_scalar=True", "wd_on_output=False"')
    assert outcome.exit_code == 0, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.scalar, adapter.dora, adapter.dora_form, adapter.dora_axis) == (
        kind,
        True,
        True,
        "lycoris",
        "input",
    )


# --- algo=full: LyCORIS's FullModule on the preset's layers ----------------------------------------------


def test_full_algo_trains_the_preset_layers_with_their_convolutions(tmp_path):
    """kohya_ss's LyCORIS "Full" preset: algo=full, conv_dim on (LyCORIS then builds modules for the 3x3
    convolutions, conv_in and conv_out of its default preset); network_dim / network_alpha mean nothing."""
    outcome = _lycoris(tmp_path, '"algo=full", "preset=full", "conv_dim=8", "conv_alpha=4"')
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_dim") == "inert" and fate(outcome, "network_alpha") == "inert"
    adapter = plan_of(outcome, tmp_path).adapter
    assert adapter.kind == "full" and (adapter.rank, adapter.alpha, adapter.conv_rank) == (0, 0.0, 0)
    convs = {"conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv", "conv_in", "conv_out"}
    assert set(adapter.conv_targets) == convs
    assert {"to_q", "ff.net.2", "time_emb_proj"} <= set(adapter.denoiser_targets)
    assert "q_proj" in adapter.text_encoder_targets
    text = out_path(tmp_path).read_text(encoding="utf-8")
    assert 'kind = "full"' in text and "rank" not in text.split("[adapter]")[1].split("[")[0]


def test_full_algo_without_convolutions_and_the_switches_it_never_reads(tmp_path):
    args = '"algo=full", "preset=attn-mlp", "use_scalar=True", "dora_wd=True", "use_tucker=True"'
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert adapter.kind == "full" and adapter.conv_targets == () and not adapter.scalar
    ignored = {k for k, r in outcome.conversion.reports.items() if r.fate == "inert"}  # DBS405 warnings
    assert {"network_args use_scalar", "network_args dora_wd", "network_args use_tucker"} <= ignored


def test_full_algo_refuses_bypass_mode(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=full", "bypass_mode=True"')  # LyCORIS's FullModule raises
    assert outcome.exit_code == 1
    assert "invalid" in {r.fate for r in outcome.conversion.reports.values()}


@pytest.mark.parametrize(
    ("args", "module", "rank"),
    [
        ('"algo=full", "module_dropout=0.1"', 0.1, 0.0),
        ('"algo=full", "rank_dropout=0.25"', 0.0, 0.25),
        ('"algo=full", "preset=attn-mlp", "module_dropout=0.2", "rank_dropout=0.3"', 0.2, 0.3),
        ('"algo=full", "module_dropout=0", "rank_dropout=0.0"', 0.0, 0.0),
    ],
)
def test_full_algo_dropouts_are_the_adapter_s(tmp_path, args, module, rank):
    """FullModule's module_dropout (its forward's one torch.rand(1)) and rank_dropout (make_weight's mask
    over the update's output rows, read from the network: was DBS403) map to the full adapter's rates
    (tests/runtime/test_lycoris_full_dropout.py checks the layers against FullModule)."""
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.module_dropout, adapter.rank_dropout) == ("full", module, rank)
    rows = dict(adapter_rows(adapter))  # the plan summary shows the draws
    assert ("  dropout" in rows) == bool(module or rank)
    if module or rank:
        assert rows["  dropout"].startswith(f"rank {rank:g} (the update's output rows")
        assert rows["  dropout"].endswith(f"module {module:g} (while training)")


# --- algo=ia3: LyCORIS's IA3Module on the preset's layers -------------------------------------------------


def test_ia3_algo_scales_the_preset_layers(tmp_path):
    """algo=ia3 with LyCORIS's attn-mlp preset: every targeted layer scaled on its output side (IA3Module's
    train_on_input defaults to False), no convolution (the preset has none), rank and alpha inert."""
    outcome = _lycoris(tmp_path, '"algo=ia3", "preset=attn-mlp"')
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_dim") == "inert"
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.conv_targets, adapter.input_targets) == ("ia3", (), ())
    assert {"to_q", "ff.net.2"} <= set(adapter.denoiser_targets) and "fc1" in adapter.text_encoder_targets


@pytest.mark.parametrize(("given", "bypass"), [("True", True), ("1", True), ("false", False)])
def test_ia3_bypass_mode_scales_the_output(tmp_path, given, bypass):
    """algo=ia3 with bypass_mode (LyCORIS's str_bool: only "false" is off): IA3Module's bypass forward, the
    layer's output scaled, its bias too (was DBS403): the adapter's `bypass` (tests/runtime/
    test_lycoris_ia3_bypass.py against IA3Module); its `dropout` is read by neither forward (DBS405)."""
    outcome = _lycoris(tmp_path, f'"algo=ia3", "bypass_mode={given}", "dropout=0.1"')
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args dropout") in ("inert", "ignored")
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.bypass) == ("ia3", bypass)


def test_ia3_preset_is_invalid_as_it_builds_no_module(tmp_path):
    """LyCORIS's ia3 preset re.matches its names from the start of each full module path: lycoris-lora
    4.1.3 builds no module (tests/runtime/test_lycoris_preset_file.py), kohya has nothing to train."""
    outcome = _lycoris(tmp_path, '"algo=ia3", "preset=ia3"')
    assert outcome.exit_code == 1 and fate(outcome, "network_args preset") == "invalid"
    assert "matches no layer" in outcome.conversion.reports["network_args preset"].note


# --- algo=diag-oft: LyCORIS's DiagOFTModule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "constraint", "rescaled"),
    [
        ('"algo=diag-oft", "preset=attn-mlp"', 0.0, False),
        ('"algo=diag-oft", "preset=attn-mlp", "constraint=1e-4", "rescaled=True"', 1e-4, True),
    ],
)
def test_diag_oft_takes_network_dim_as_its_block_size(tmp_path, args, constraint, rescaled):
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_dim") == "mapped" and fate(outcome, "network_alpha") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled) == (
        "diag-oft",
        8,
        constraint,
        rescaled,
    )


def test_diag_oft_gives_the_kxk_convolutions_conv_dims_block_size(tmp_path):
    """LyCORIS's create_single_module: a Conv2d wider than 1x1 at conv_dim, a 1x1 one and the Linears at
    network_dim (was DBS403): one block over SD 1.5's k x k convolutions (checked against lycoris-lora's
    network in tests/runtime/test_lycoris_oft_conv_dim.py)."""
    outcome = _lycoris(tmp_path, '"algo=diag-oft", "conv_dim=4"')
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


@pytest.mark.parametrize(
    ("args", "unbalanced"),
    [
        ('"algo=lokr", "factor=32", "unbalanced_factorization=True"', True),
        ('"algo=lokr", "factor=32", "unbalanced_factorization=0"', True),  # str_bool: only "false" is false
        ('"algo=lokr", "factor=32", "unbalanced_factorization=False"', False),
        ('"algo=lokr", "factor=32"', False),
    ],
)
def test_lokr_unbalanced_factorization_maps(tmp_path, args, unbalanced):
    """LyCORIS's LokrModule swaps the output split with unbalanced_factorization; the plan trains LyCORIS's
    factorization (the smaller part first) for a factor above the square root."""
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.factor, adapter.unbalanced_factorization) == (32, unbalanced)
    assert adapter.lokr_factorization == "lycoris"


@pytest.mark.parametrize("preset", ["attn-mlp", "full-lin", "full"])
def test_sd15_presets_take_the_time_embedding(tmp_path, preset):
    """On kohya's SD 1.x U-Net LyCORIS's attn-mlp (its TimestepEmbedding class), full and full-lin (by name)
    adapt the time embedding's linears; full-lin also the ResNets' 1x1 conv_shortcut (at the rank)."""
    outcome = _lycoris(tmp_path, f'"algo=lokr", "preset={preset}"')
    assert outcome.exit_code == 0, errors(outcome)
    targets = plan_of(outcome, tmp_path).adapter.denoiser_targets
    assert {"time_embedding.linear_1", "time_embedding.linear_2", "to_q", "ff.net.2"} <= set(targets)
    assert ("conv_shortcut" in targets) == (preset != "attn-mlp")
