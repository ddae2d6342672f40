"""lycoris.kohya --dim_from_weights with a BOFT file a train_norm run saved (ButterflyOFTModules beside
NormModules' `w_norm` / `b_norm`) on SD 1.x (issue 12): lycoris-lora 4.1.3's create_network_from_weights
builds a ButterflyOFTModule per BOFT module and a NormModule per norm module (the U-Net's GroupNorms and
LayerNorms, CLIP's LayerNorms); without --dim_from_weights create_network builds the preset's algo=boft
train_norm network, which loads the file; apply_to, load_weights. dbspec's converted run (kind boft with
denoiser_norms / text_encoder_norms, started from the file) starts every layer alike (blocks and offsets
equal, outputs to 1e-5); a tiny run trains the offsets and the butterflies."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules
from tests.runtime.test_lycoris_sd_norm_file import same_norms

lycoris_kohya = pytest.importorskip("lycoris.kohya")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _boft_network(pipe, folder, monkeypatch, from_file=None):
    """kohya's steps: create_network over test_lycoris_sd_norm_file's PRESET (algo=boft, train_norm) or, with
    `from_file`, create_network_from_weights; apply_to."""
    import copy

    from tests.runtime.test_lycoris_sd_full_file import _named
    from tests.runtime.test_lycoris_sd_norm_file import PRESET

    kept_lycoris_presets(monkeypatch)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    if from_file is not None:
        made, _ = lycoris_kohya.create_network_from_weights(1.0, str(from_file), None, named, unet)
    else:
        preset = folder / "preset.toml"
        preset.write_text(PRESET, encoding="utf-8")
        made = lycoris_kohya.create_network(
            1.0, 4, 1.0, None, named, unet, algo="boft", conv_dim="4", train_norm="True", preset=str(preset)
        )
    made.apply_to(named, unet, True, True)
    return made


@pytest.mark.parametrize("from_weights", [True, False])
def test_boft_norm_file_starts_as_lycoris_trains(pipe, tmp_path, monkeypatch, from_weights):
    """--dim_from_weights: create_network_from_weights builds the file's modules; without it the preset's
    algo=boft train_norm network (create_network) loads the file (load_state_dict(strict=False): the
    left-out modules keep their init, zero offsets for the norms)."""
    from dbspec.runtime.lycoris_boft import BoftLayer

    made = _boft_network(pipe, tmp_path, monkeypatch)
    path = kit.saved_file(made, tmp_path, seed=5, scale=0.1, drop=7)
    made = _boft_network(pipe, tmp_path, monkeypatch, path if from_weights else None)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    assert set(theirs) == in_file if from_weights else in_file < set(theirs)
    kinds = {type(m).__name__ for m in theirs.values()}
    assert kinds == {"ButterflyOFTModule", "NormModule"}, kinds
    norms = {n: m for n, m in theirs.items() if type(m).__name__ == "NormModule"}
    assert any(n.startswith("lora_te_") for n in norms) and any(n.startswith("lora_unet_") for n in norms)

    args = (
        '--dim_from_weights --network_args "algo=lokr"'
        if from_weights
        else '--network_dim=4 --network_alpha=1 --network_args "algo=boft" "preset=preset.toml" '
        '"conv_dim=4" "train_norm=True"'
    )
    plan = kit.converted_plan(tmp_path, args)
    a = plan.adapter
    assert a.kind == "boft" and a.denoiser_norms and a.text_encoder_norms and a.init_partial
    comps, count = _loaded(plan)
    assert count == len(in_file)
    same_norms(comps, norms)
    layers = kit.kohya_layers(comps, BoftLayer, adapter=True)
    bofts = {n: m for n, m in theirs.items() if n not in norms}
    assert sorted(layers) == sorted(bofts)
    for name, lyco in bofts.items():
        torch.testing.assert_close(layers[name].lora_oft_blocks["default"], lyco.oft_blocks, rtol=0, atol=0)
        x = kit.sample_input(layers[name].get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layers[name](x), lyco(x), rtol=0, atol=1e-5, msg=name)

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    start = load_file(str(path))
    assert kit.trained(saved, start, lambda k: k.endswith(".w_norm")), "the offsets trained"
    assert kit.trained(saved, start, lambda k: k.endswith(".oft_blocks")), "the butterflies trained"
