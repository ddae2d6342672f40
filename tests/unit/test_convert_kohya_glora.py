"""kohya configs training LyCORIS's GLoRA (`network_module = "lycoris.kohya"`, `algo=glora`): once refused
(DBS403), now [adapter] kind "glora". The expectation is LyCORIS's kohya network (lycoris/kohya.py:
network_dim / network_alpha the linear layers' lora_dim / alpha, conv_dim / conv_alpha, defaulting to them,
the convolutions'), not read back from the converter."""

from __future__ import annotations

import pytest
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


def test_glora_ignores_dora_wd(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=glora", "dora_wd=True"')
    assert outcome.exit_code == 0, errors(outcome)
    assert not plan_of(outcome, tmp_path).adapter.dora
    assert fate(outcome, "network_args dora_wd") == "inert"


def test_glora_switches_map_to_its_options(tmp_path):
    """GLoRAModule's use_scalar (str_bool: "0" is on), module_dropout and bypass_mode, whose forward alone
    reads rank_dropout and dropout."""
    args = (
        '"algo=glora", "use_scalar=0", "bypass_mode=True", "rank_dropout=0.3", "module_dropout=0.2", '
        '"dropout=0.1"'
    )
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.scalar, a.bypass, a.rank_dropout, a.module_dropout, a.bypass_dropout) == (
        True,
        True,
        0.3,
        0.2,
        0.1,
    )
    from dbspec.plan.summary import adapter_rows

    rows = dict(adapter_rows(a))
    assert "LyCORIS use_scalar" in rows["  scalar"] and "module 0.2" in rows["  dropout"]
    assert "keeps the ranks drawn below 0.3" in rows["  bypass"] and "dropout 0.1" in rows["  bypass"]


def test_glora_dropouts_without_bypass_are_ignored_as_lycoris_ignores_them(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=glora", "rank_dropout=0.3", "module_dropout=0.2", "dropout=0.1"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.bypass, a.rank_dropout, a.module_dropout, a.bypass_dropout) == (False, 0.0, 0.2, 0.0)
    for key in ("rank_dropout", "dropout"):
        assert fate(outcome, f"network_args {key}") == "inert"
        assert "bypass_mode" in outcome.conversion.reports[f"network_args {key}"].note


def test_glora_takes_network_dropout_as_its_dropout_in_bypass_mode(tmp_path):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    config = CONFIG.format(model=SD15, args='"algo=glora", "bypass_mode=True"') + "network_dropout = 0.25\n"
    write(tmp_path / "cfg.toml", config)
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass_dropout == 0.25
    assert fate(outcome, "network_dropout") == "mapped"


def test_glora_rs_lora_scales_alpha_by_the_square_root_of_the_rank(tmp_path):
    """GLoRAModule: scale alpha / sqrt(rank), i.e. the plain alpha x sqrt(rank) (network_dim 8, alpha 4;
    conv_dim 4, conv_alpha 2)."""
    outcome = _lycoris(tmp_path, '"algo=glora", "conv_dim=4", "conv_alpha=2", "rs_lora=True"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.alpha / a.rank == pytest.approx(4 / 8**0.5)
    assert a.conv_alpha / a.conv_rank == pytest.approx(2 / 4**0.5)


def test_negative_alphas_keep_their_sign(tmp_path):
    """LyCORIS's GLoRAModule scales by alpha / dim with the sign kept (`alpha = lora_dim if alpha is None or
    alpha == 0 else alpha`), kohya's create_network hands network_alpha on as given and conv_alpha defaults
    to it, a preset entry's own alpha wins (`alpha or self.alpha`): all to the GLoRA spec's signed alphas
    (was DBS403: dbspec's alpha had to be above 0). tests/runtime/test_lycoris_glora.py: GloraLayer at a
    negative alpha equal to GLoRAModule's output and gradients; a run at alpha -1 trains, resumes
    bit-exact and loads back in lycoris-lora."""
    outcome = _lycoris(tmp_path, '"algo=glora"')
    plain = plan_of(outcome, tmp_path).adapter
    config = (tmp_path / "cfg.toml").read_text().replace("network_alpha = 4", "network_alpha = -4")
    write(tmp_path / "cfg.toml", config)
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_alpha) == ("glora", 8, -plain.alpha, -plain.conv_alpha)
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["Transformer2DModel"]\ntext_encoder_target_module = ["CLIPAttention"]\n'
        "[module_algo_map.FeedForward]\ndim = 4\nalpha = -2\n",
        encoding="utf-8",
    )
    (tmp_path / "entry").mkdir()
    entry = _lycoris(tmp_path / "entry", '"algo=glora", "preset=../p.toml"')
    assert entry.exit_code == 0, errors(entry)
    assert [(b.rank, b.alpha) for b in plan_of(entry, tmp_path / "entry").adapter.blocks] == [(4, -2.0)]
