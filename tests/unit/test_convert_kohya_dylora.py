"""kohya configs training DyLoRA: kohya's own `network_module = "networks.dylora"` (sd-scripts
networks/dylora.py: `unit`, conv_dim asserted equal to network_dim, the convolutions at network_alpha) and
LyCORIS's `network_module = "lycoris.kohya"` with `algo=dylora` (lycoris/modules/dylora.py: `block_size`, 4
unless given), both once refused (DBS403), now [adapter] kind "dylora". The expectations are read from those
two create_network functions, not from the converter."""

from __future__ import annotations

from convert_kit import (  # noqa: F401
    SD15,
    codes,
    empty_hub_cache,
    errors,
    fate,
    images,
    kohya,
    kohya_lora,
    messages,
    out_path,
    plan_of,
    write,
)

from dbspec.convert.kohya.network import KOHYA_TEXT_TARGETS, KOHYA_UNET_TARGETS
from dbspec.spec.model import KOHYA_CONV_TARGETS

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "{module}"
network_dim = {dim}
network_alpha = 4
network_args = [{args}]
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _convert(tmp_path, module: str, args: str, dim: int = 8):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", CONFIG.format(model=SD15, module=module, dim=dim, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_networks_dylora_unit_and_its_layers(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", '"unit=2"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 2, "kohya")
    assert a.denoiser_targets == tuple(KOHYA_UNET_TARGETS) and a.text_encoder_targets == tuple(
        KOHYA_TEXT_TARGETS
    )
    assert (a.conv_rank, a.conv_targets) == (0, ())
    assert fate(outcome, "network_module") == "mapped"


def test_networks_dylora_unit_defaults_to_one(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", "")
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.dylora_unit == 1


def test_networks_dylora_conv_dim_takes_network_alpha(tmp_path):
    """DyLoRANetwork: conv_dim must equal network_dim; the ResNets' layers get network_dim and network_alpha
    (conv_alpha is parsed, never used), their time projection and shortcut too."""
    outcome = _convert(tmp_path, "networks.dylora", '"unit=4", "conv_dim=8", "conv_alpha=1"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, a.conv_targets) == (8, 4.0, tuple(KOHYA_CONV_TARGETS))
    assert {"time_emb_proj", "conv_shortcut"} <= set(a.denoiser_targets)
    assert "conv_alpha" in outcome.conversion.reports["network_args conv_alpha"].note


def test_networks_dylora_refuses_what_kohya_asserts(tmp_path):
    outcome = _convert(tmp_path, "networks.dylora", '"conv_dim=4"')
    assert outcome.exit_code == 1 and "conv_dim" in " ".join(errors(outcome))
    outcome = _convert(tmp_path, "networks.dylora", '"unit=3"')
    assert outcome.exit_code == 1 and "unit" in " ".join(errors(outcome))


def test_lycoris_dylora_block_size_defaults_to_four(tmp_path):
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "conv_dim=4", "conv_alpha=2"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 4, "lycoris")
    assert (a.conv_rank, a.conv_alpha) == (4, 2.0) and a.conv_targets
    assert not a.dora and not a.tucker and not a.rank_dropout


def test_lycoris_dylora_block_size_and_the_arguments_it_never_reads(tmp_path):
    outcome = _convert(
        tmp_path,
        "lycoris.kohya",
        '"algo=dylora", "block_size=2", "dropout=0.1", "rank_dropout=0.2", "dora_wd=True"',
    )
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dylora_unit, a.conv_rank, a.dora, a.rank_dropout) == (2, 8, False, 0.0)
    assert fate(outcome, "network_args dropout") == "inert"


def test_lycoris_dylora_module_dropout(tmp_path):
    """DyLoraModule.forward skips the layer with probability module_dropout while training (issue 12)."""
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "module_dropout=0.25"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dylora_form, a.module_dropout, a.bypass) == ("dylora", "lycoris", 0.25, False)
    assert fate(outcome, "network_args") == "mapped"


def test_lycoris_dylora_block_size_off_the_ranks_is_its_assertion(tmp_path):
    """DyLoraModule asserts lora_dim % block_size == 0: kohya's run stops (DBS402), for the linears' rank and
    for conv_dim alike."""
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "block_size=3"', dim=8)
    assert outcome.exit_code == 1 and codes(outcome) >= {"DBS402"}
    assert "lora_dim % block_size" in messages(outcome, "DBS402") and "network_dim 8" in messages(
        outcome, "DBS402"
    )
    outcome = _convert(tmp_path, "lycoris.kohya", '"algo=dylora", "block_size=4", "conv_dim=6"', dim=8)
    assert outcome.exit_code == 1 and "conv_dim 6" in messages(outcome, "DBS402")
    assert "DBS403" not in codes(outcome)


BYPASS = (
    "--network_module lycoris.kohya --network_dim 4 --network_alpha 2 "
    "--network_args algo=dylora preset={preset} bypass_mode={on} block_size={block}"
)


def test_lycoris_dylora_bypass_with_one_block(tmp_path):
    """bypass_mode with one block per layer (network_dim = block_size, conv_dim defaulting to it): LyCORIS's
    bypass forward runs, W x + up (down x) unscaled: adapter.bypass (issue 12)."""
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="full", on="True", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.bypass, a.conv_rank) == ("dylora", 4, 2.0, 4, True, 4)
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-mlp", on="True", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass is True
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-only", on="false", block=4))
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass is False  # LyCORIS's str_bool


def test_lycoris_dylora_bypass_that_crashes_is_invalid(tmp_path):
    """Several blocks in a layer (its bypass forward views the drawn blocks as the whole rank): LyCORIS
    crashes in the first steps, DBS402 naming why; a conv_dim above block_size alike."""
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="attn-mlp", on="True", block=2))
    assert outcome.exit_code == 1 and "network_dim 4" in messages(outcome, "DBS402")
    outcome = kohya_lora(tmp_path, BYPASS.format(preset="full", on="True", block=4) + " conv_dim=8")
    assert outcome.exit_code == 1 and "conv_dim 8" in messages(outcome, "DBS402")
    assert "network_dim" not in messages(outcome, "DBS402")


def test_networks_dylora_loraplus(tmp_path):
    """DyLoRANetwork.prepare_optimizer_params: each lora_B block at lr x (loraplus_unet_lr_ratio or
    loraplus_lr_ratio) in the U-Net, x (loraplus_text_encoder_lr_ratio or loraplus_lr_ratio) in the text
    encoder (issue 12)."""
    outcome = _convert(tmp_path, "networks.dylora", '"unit=2", "loraplus_lr_ratio=16"')
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (
        16.0,
        16.0,
    )
    assert plan.adapter.kind == "dylora" and fate(outcome, "network_args") == "mapped"
    outcome = _convert(
        tmp_path,
        "networks.dylora",
        '"loraplus_lr_ratio=16", "loraplus_unet_lr_ratio=8", "loraplus_text_encoder_lr_ratio=4"',
    )
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.loraplus_denoiser_ratio, plan.optimizer.loraplus_text_encoder_ratio) == (8.0, 4.0)
    outcome = _convert(tmp_path, "networks.dylora", '"loraplus_lr_ratio=0"')  # the ups never train
    assert outcome.exit_code == 1 and "DBS403" in codes(outcome)


def test_the_plan_summary_shows_the_dylora_draw(tmp_path):
    from dbspec.plan.summary import adapter_rows

    outcome = _convert(tmp_path, "networks.dylora", '"unit=2"')
    rows = dict(adapter_rows(plan_of(outcome, tmp_path).adapter))
    assert rows["adapter"] == "dylora (kohya's forward, blocks of 2 ranks) rank 8, alpha 4"
    assert "sqrt(rank / ((b + 1) x unit))" in rows["  rank draw"]
    assert "every rank at alpha / rank" in rows["  full rank"]
