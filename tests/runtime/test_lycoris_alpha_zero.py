"""kohya `--network_alpha 0` and `conv_alpha=0` with lycoris.kohya (issue 12;
dbspec/convert/kohya/alpha_zero.py), against lycoris-lora 4.1.3's own network on the tiny SD 1.x U-Net and
CLIP: each module reads alpha 0 as its dim (a preset entry's own dim too, its `alpha or network_alpha` being
0), so every layer the converted plan adapts has LyCORIS's class, rank and scale (1; its entries' own alphas
where they give one)."""

from __future__ import annotations

import copy

import pytest
from torch import nn

from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import PRESETS, _ours, _theirs

lycoris_kohya = pytest.importorskip("lycoris.kohya")


@pytest.fixture(scope="module")
def pipe():
    from dbspec.runtime.tiny import build_pipeline

    return build_pipeline("builtin:tiny-sd1")


def test_alpha_zero_gives_lycoris_scales(pipe, tmp_path, monkeypatch):
    algo = "locon"  # the preset's entries: LoCon on the ResNets, LoRA on CLIP's MLP at its own alpha
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    preset = tmp_path / "classes.toml"
    preset.write_text(PRESETS["classes"], encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=0 "
        f'--network_args "algo={algo}" "conv_dim=4" "conv_alpha=0" "preset={preset.name}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    made = lycoris_kohya.create_network(
        1.0, 4, 0.0, None, named, copy.deepcopy(pipe.unet), algo=algo, conv_dim="4", conv_alpha="0",
        preset=str(preset),
    )  # fmt: skip
    theirs, ours = _theirs(made), _ours(pipe, plan.adapter)
    assert {v[2] for v in theirs.values()} >= {1.0} and len({v[1] for v in theirs.values()}) > 1
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
