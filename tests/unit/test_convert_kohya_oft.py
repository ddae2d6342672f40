"""kohya's own OFT network (`network_module = "networks.oft"`, sd-scripts networks/oft.py): once refused
(DBS403), now [adapter] kind "diag-oft" with form "kohya". The expectations are what kohya's create_network
and OFTNetwork do with the arguments (network_dim the block count, network_alpha the constraint per row,
`enable_all_linear` / `enable_conv` read as bool() of a string, the U-Net alone), not read back from the
converter; tests/runtime/test_kohya_oft.py checks the layers against kohya's OFTModule."""

from __future__ import annotations

import pytest
from convert_kit import SD15, SDXL, codes, errors, expressible, fate, images, kohya, messages, plan_of, write

from dbspec.spec.model import KOHYA_CONV_TARGETS

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_LINEAR = {*ATTENTION, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"}

SD15_TOML = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
output_name = "oft_cat"
network_module = "networks.oft"
network_dim = 8
network_alpha = 0.001
{extra}
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
save_model_as = "safetensors"
"""


def _toml(tmp_path, extra: str = "", model: str = SD15, script: str = "train_network.py"):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", SD15_TOML.format(model=model, extra=extra))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")


def test_sd15_attention_blocks_and_constraint(tmp_path):
    outcome = expressible(_toml(tmp_path))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 8, 0.001)
    assert list(a.denoiser_targets) == ATTENTION and a.conv_targets == () and a.text_encoder_targets == ()
    assert not a.oft_rescaled and not a.bypass
    assert plan.train_denoiser and not plan.train_text_encoder  # OFTNetwork adapts the U-Net alone
    assert fate(outcome, "network_module") == "mapped" and fate(outcome, "network_dim") == "mapped"
    assert fate(outcome, "network_alpha") == "mapped"
    assert plan.optimizer.lr == 1e-4
    from dbspec.plan.summary import adapter_rows

    assert dict(adapter_rows(a))["adapter"].startswith("diag-oft (kohya networks.oft: 8 orthogonal blocks")


@pytest.mark.parametrize(
    ("args", "linear", "convs"),
    [
        ('network_args = ["enable_all_linear=True"]', True, False),
        ('network_args = ["enable_conv=True"]', False, True),
        # create_network's bool() of kohya's string: "False" is true too; an empty value is false
        ('network_args = ["enable_all_linear=False", "enable_conv=0"]', True, True),
        ('network_args = ["enable_all_linear="]', False, False),
    ],
)
def test_network_args_widen_the_targets(tmp_path, args, linear, convs):
    outcome = expressible(_toml(tmp_path, args))
    a = plan_of(outcome, tmp_path).adapter
    expected = set(ALL_LINEAR if linear else ATTENTION) | (
        {"time_emb_proj", "conv_shortcut"} if convs else set()
    )
    assert set(a.denoiser_targets) == expected
    assert list(a.conv_targets) == (KOHYA_CONV_TARGETS if convs else [])


def test_sdxl_command_line_with_defaults(tmp_path):
    """sdxl_train_network.py; network_dim unset (4 blocks) and network_alpha unset (train_network.py's 1:
    kohya warns it is large, a constraint of the layer's width)."""
    images(tmp_path / "img" / "10_ohwx cat", 2, (1024, 1024))
    outcome = expressible(
        kohya(
            tmp_path,
            command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
            "--train_data_dir=img --resolution=1024 --output_dir=out --network_module=networks.oft "
            "--network_args enable_all_linear=1 --network_train_unet_only --cache_text_encoder_outputs "
            "--learning_rate=1e-4 --max_train_steps=400 --optimizer_type=AdamW8bit --mixed_precision=bf16 "
            "--gradient_checkpointing --save_model_as=safetensors",
        )
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 4, 1.0)
    assert set(a.denoiser_targets) == ALL_LINEAR and not plan.train_text_encoder
    assert "kohya_lora" in plan.checkpoints.exports


def test_what_networks_oft_ignores(tmp_path):
    extra = 'network_args = ["enable_conv=1", "dropout=0.1", "loraplus_lr_ratio=4"]\nnetwork_dropout = 0.1\n'
    extra += "scale_weight_norms = 1.0\n"
    outcome = expressible(_toml(tmp_path, extra))
    assert "DBS405" in codes(outcome)
    ignored = messages(outcome, "DBS405")
    assert "reads only enable_all_linear and enable_conv" in ignored
    assert "never reads the dropout" in ignored and "apply_max_norm_regularization" in ignored
    a = plan_of(outcome, tmp_path).adapter
    assert a.max_norm == 0 and a.conv_targets


@pytest.mark.parametrize("dim", [3, 7, 640])
def test_a_block_count_not_dividing_the_widths_is_what_kohya_crashes_on(tmp_path, dim):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(
        tmp_path / "cfg.toml",
        SD15_TOML.format(model=SD15, extra="").replace("network_dim = 8", f"network_dim = {dim}"),
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and "DBS402" in codes(outcome), errors(outcome)
    assert "does not divide" in messages(outcome, "DBS402")


def test_text_encoder_only_crashes_in_kohya(tmp_path):
    outcome = _toml(tmp_path, "network_train_text_encoder_only = true")
    assert outcome.exit_code == 1 and "asserts apply_unet" in messages(outcome, "DBS402")


@pytest.mark.parametrize("extra", ['network_weights = "w.safetensors"', "network_alpha = -1"])
def test_not_expressed(tmp_path, extra):
    text = SD15_TOML.format(model=SD15, extra="")
    if extra.startswith("network_alpha"):
        text = text.replace("network_alpha = 0.001", extra)
    else:
        text = text.replace("network_alpha = 0.001", f"network_alpha = 0.001\n{extra}")
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", text)
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 1 and "DBS403" in codes(outcome), errors(outcome)
