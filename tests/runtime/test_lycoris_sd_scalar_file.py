"""lycoris.kohya --network_weights with `use_scalar` (LoCon, LoHa, LoKr, GLoRA) on SD 1.x (issue 12;
runtime/init_weights.py): the file's factors hold each module's trained scalar folded in, and LyCORIS's
modules' load hook sets every module's scalar to 1 (those the file lacks too, whose zero-scaled random factors
then act). lycoris-lora 4.1.3's network over a preset file on the tiny U-Net and CLIP, every factor and scalar
moved at random, saved as its network saves them (some modules left out); kohya's steps (create_network,
apply_to, load_weights) and dbspec's converted run: every scalar 1 in both, every module the file holds
giving the same outputs (to 1e-5); a tiny run from the file trains and resumes bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_algo_maps import NETWORK_ATTRS
from tests.runtime.test_lycoris_sd_full_file import PRESET, _convert, _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
ALGOS = {"locon": {}, "loha": {}, "lokr": {"factor": "4"}, "glora": {}}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder: Path, monkeypatch, algo: str):
    network = lycoris_kohya.LycorisNetworkKohya
    for attr in NETWORK_ATTRS:  # create_network's apply_preset sets the class's attributes
        monkeypatch.setattr(network, attr, copy.copy(getattr(network, attr)))
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        unet,
        algo=algo,
        preset=str(preset),
        conv_dim="4",
        conv_alpha="2",
        use_scalar="True",
        **ALGOS[algo],
    )
    made.apply_to(named, unet, True, True)
    return made


def _file(pipe, folder: Path, monkeypatch, algo: str) -> Path:
    made = _network(pipe, folder, monkeypatch, algo)
    torch.manual_seed(10)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the scalars too: the file folds them in
    state = {k: v.detach().clone().contiguous() for k, v in made.state_dict().items()}
    assert not any("scalar" in k for k in state)
    names = sorted({k.split(".")[0] for k in state})
    for name in names[::6]:
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
    path = folder / "prev.safetensors"
    save_file(state, str(path))
    return path


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dbspec.runtime.adapters import lora_adapter
    from dbspec.runtime.exports import kohya_parts

    out = {}
    for prefix, module, to_path in kohya_parts(
        unet=comps.unet, text_encoders=comps.text_encoders, family="sd1"
    ):
        found = lora_adapter(module)
        for name, layer in found[0].named_modules() if found else ():
            if isinstance(layer, BaseTunerLayer) and found[1] in getattr(layer, "r", {}):
                out[f"{prefix}_{to_path(name).replace('.', '_')}"] = layer
    return out


def _scalar(layer) -> torch.Tensor:
    from dbspec.runtime.lycoris_switches import layer_scalar

    glora = layer._modules.get("lora_glora_scalar")
    return glora["default"] if glora is not None else layer_scalar(layer, "default")


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_scalar_file_starts_as_lycoris_loads_it_trains_and_resumes(pipe, tmp_path, monkeypatch, algo):
    path = _file(pipe, tmp_path, monkeypatch, algo)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    made = _network(pipe, tmp_path, monkeypatch, algo)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs) and all(float(m.scalar.detach()) == 1.0 for m in theirs.values())
    from tests.unit.convert_kit import out_path, plan_of

    extra = " ".join(f'"{k}={v}"' for k, v in ALGOS[algo].items())
    args = (
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" "conv_dim=4" '
        f'"conv_alpha=2" "use_scalar=True" {extra}'
    )
    plan = plan_of(_convert(tmp_path, args), tmp_path, ["model.base=builtin:tiny-sd1"])
    assert plan.adapter.scalar and plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    moved = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        assert float(_scalar(layer).detach()) == 1.0, name  # the file's modules and the others alike
        if name not in in_file:
            continue  # its own random factors (LyCORIS's draws are not dbspec's)
        base = layer.get_base_layer()
        x = (
            torch.randn(2, base.in_features)
            if isinstance(base, nn.Linear)
            else torch.randn(1, base.in_channels, 8, 8)
        )
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            moved += not torch.allclose(layer(x), base(x), atol=1e-4)
    assert moved > len(in_file) // 2  # a random scalar near 0 folded in can leave a module near its base

    overrides = ["model.base=builtin:tiny-sd1"]
    whole = execute(compile_spec(out_path(tmp_path), overrides))
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert any(
        k in state and not k.endswith(".alpha") and not torch.allclose(v, state[k]) for k, v in saved.items()
    ), "the run trained the factors"
    split = compile_spec(out_path(tmp_path), [*overrides, "output.dir=parts"])
    first = execute(split, stop_after=1)
    resumed = execute(split, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    (again,) = Path(resumed.final).glob("*.kohya.safetensors")
    again = load_file(str(again))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)
