"""kohya configs training LyCORIS's GLoRA (`network_module = "lycoris.kohya"`, `algo=glora`): once refused
(DBS403), now [adapter] kind "glora". The expectation is LyCORIS's kohya network (lycoris/kohya.py:
network_dim / network_alpha the linear layers' lora_dim / alpha, conv_dim / conv_alpha, defaulting to them,
the convolutions'), not read back from the converter."""

from __future__ import annotations

from convert_kit import SD15, empty_hub_cache, errors, fate, images, kohya, out_path, plan_of, write  # noqa: F401

CONFIG = """\
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
    write(tmp_path / "cfg.toml", CONFIG.format(model=SD15, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_glora_takes_the_ranks_and_alphas(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=glora", "conv_dim=4", "conv_alpha=2"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("glora", 8, 4.0, 4, 2.0)
    assert a.conv_targets


def test_glora_convolutions_default_to_network_dim(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=glora"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha) == (8, 4.0)


def test_glora_ignores_dora_wd_and_refuses_what_it_does_not_express(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=glora", "dora_wd=True"')
    assert outcome.exit_code == 0, errors(outcome)
    assert not plan_of(outcome, tmp_path).adapter.dora
    outcome = _lycoris(tmp_path, '"algo=glora", "use_scalar=True"')
    assert outcome.exit_code == 1 and "use_scalar" in outcome.conversion.reports["network_args"].note
