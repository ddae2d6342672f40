"""lycoris.kohya --network_weights with a file a train_norm run saved (LoCon modules beside NormModules'
`w_norm` / `b_norm`) on SD 1.x (issue 12): with --dim_from_weights lycoris-lora 4.1.3's
create_network_from_weights builds a LoConModule per LoCon module and a NormModule per norm module of the
file (the U-Net's GroupNorms and LayerNorms, CLIP's LayerNorms), without it create_network builds the
preset's train_norm network; apply_to, load_weights; dbspec's converted run (adapter.denoiser_norms /
text_encoder_norms beside the LoRA, every offset started from the file by runtime/init_weights.py) starts
every layer alike (offsets equal, outputs to 1e-5); a tiny run from the file trains the offsets, its
export holding the trained `w_norm` / `b_norm`."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
# the attention and ResNet blocks (their norms too) and CLIP's encoder layers (their LayerNorms)
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = ["CLIPEncoderLayer"]
"""


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _norm_file(pipe, folder, monkeypatch):
    """A LoCon train_norm network over PRESET, every parameter moved at random, some modules left out."""
    kept_lycoris_presets(monkeypatch)
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 2.0, None, named, unet, algo="locon", conv_dim="4", train_norm="True", preset=str(preset)
    )
    made.apply_to(named, unet, True, True)
    return kit.saved_file(made, folder, seed=11, scale=0.1, drop=7)


def _ours_norms(comps) -> dict[str, nn.Module]:
    from dbspec.runtime.exports import kohya_parts
    from dbspec.runtime.norm_offsets import norm_layers

    out = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family="sd1"
    ):
        for path, layer in norm_layers(module):
            out[f"{prefix}_{to_path(path).replace('.', '_')}"] = layer
    return out


def same_norms(comps, norms: dict[str, nn.Module]) -> None:
    """The run's norm offsets are lycoris-lora's NormModules `norms` (by kohya name): the same layers, their
    offsets exactly, their outputs to 1e-5."""
    ours = _ours_norms(comps)
    assert sorted(ours) == sorted(norms)
    for name, lyco in norms.items():
        layer = ours[name]
        torch.testing.assert_close(layer.lora_w_norm, lyco.w_norm, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(layer.lora_b_norm, lyco.b_norm, rtol=0, atol=0, msg=name)
        x = torch.randn(2, 3, layer.weight.shape[0]) if isinstance(layer, nn.LayerNorm) else None
        x = x if x is not None else torch.randn(1, layer.num_channels, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)


def _network(pipe, folder, monkeypatch, from_file=None):
    """kohya's steps: create_network (the preset, algo=locon, train_norm) or, with `from_file`,
    create_network_from_weights on it; apply_to."""
    kept_lycoris_presets(monkeypatch)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    if from_file is not None:
        made, _ = lycoris_kohya.create_network_from_weights(1.0, str(from_file), None, named, unet)
    else:
        preset = folder / "preset.toml"
        preset.write_text(PRESET, encoding="utf-8")
        made = lycoris_kohya.create_network(
            1.0, 4, 2.0, None, named, unet, algo="locon", conv_dim="4", train_norm="True", preset=str(preset)
        )
    made.apply_to(named, unet, True, True)
    return made


def _norm_file(pipe, folder, monkeypatch):
    """A LoCon train_norm network over PRESET, every parameter moved at random, some modules left out."""
    return kit.saved_file(_network(pipe, folder, monkeypatch), folder, seed=11, scale=0.1, drop=7)


@pytest.mark.parametrize("from_weights", [True, False])
def test_norm_file_starts_as_lycoris_trains(pipe, tmp_path, monkeypatch, from_weights):
    """--dim_from_weights: create_network_from_weights builds the file's modules; without it the preset's
    train_norm network (create_network) loads the file (load_state_dict(strict=False): the left-out
    modules keep their init, zero offsets for the norms)."""
    from peft.tuners.lora import LoraLayer

    path = _norm_file(pipe, tmp_path, monkeypatch)
    made = _network(pipe, tmp_path, monkeypatch, path if from_weights else None)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    assert set(theirs) == in_file if from_weights else in_file < set(theirs)
    norms = {n: m for n, m in theirs.items() if type(m).__name__ == "NormModule"}
    assert any(n.startswith("lora_te_") for n in norms) and any(n.startswith("lora_unet_") for n in norms)
    assert any("GroupNorm" in type(m.org_module[0]).__name__ for m in norms.values())
    args = (
        '--dim_from_weights --network_args "algo=lokr" "train_norm=True"'
        if from_weights
        else '--network_dim=4 --network_alpha=2 --network_args "algo=locon" "preset=preset.toml" '
        '"conv_dim=4" "train_norm=True"'
    )
    plan = kit.converted_plan(tmp_path, args)
    a = plan.adapter
    assert a.kind == "lora" and a.denoiser_norms and a.text_encoder_norms and a.init_partial
    comps, count = _loaded(plan)
    assert count == len(in_file)
    same_norms(comps, norms)
    for name, lyco in norms.items():
        assert bool(torch.count_nonzero(lyco.w_norm)) == (name in in_file), name
    loras = kit.kohya_layers(comps, LoraLayer, adapter=True)
    locons = {n: m for n, m in theirs.items() if n not in norms}
    assert sorted(loras) == sorted(locons)
    for name, lyco in locons.items():
        x = kit.sample_input(loras[name].get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(loras[name](x), lyco(x), rtol=0, atol=1e-5, msg=name)

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, load_file(str(path)), lambda k: k.endswith(".w_norm")), "the offsets trained"
