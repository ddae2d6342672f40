"""lycoris.kohya --network_weights with `use_scalar` (LoCon, LoHa, LoKr, GLoRA) on SD 1.x (issue 12;
runtime/init_weights.py): the file's factors hold each module's trained scalar folded in, and LyCORIS's
modules' load hook sets every module's scalar to 1 (those the file lacks too, whose zero-scaled random factors
then act). lycoris-lora 4.1.3's network over a preset file on the tiny U-Net and CLIP, every factor and scalar
moved at random, saved as its network saves them (some modules left out); kohya's steps (create_network,
apply_to, load_weights) and dbspec's converted run: every scalar 1 in both, every module the file holds
giving the same outputs (to 1e-5); a tiny run from the file trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules

ALGOS = {"locon": {}, "loha": {}, "lokr": {"factor": "4"}, "glora": {}}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, algo: str):
    args = {"conv_dim": "4", "conv_alpha": "2", "use_scalar": "True", **ALGOS[algo]}
    return kit.network(pipe, folder, monkeypatch, algo=algo, **args)


def _file(pipe, folder, monkeypatch, algo: str):
    state = kit.moved_state(_network(pipe, folder, monkeypatch, algo), seed=10, scale=0.1)
    assert not any("scalar" in k for k in state)  # the scalars moved too: the file folds them in
    return kit.save_state(state, folder, drop=6)


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return kit.kohya_layers(comps, BaseTunerLayer, adapter=True)


def _scalar(layer) -> torch.Tensor:
    from dbspec.runtime.lycoris_switches import layer_scalar

    glora = layer._modules.get("lora_glora_scalar")
    return glora["default"] if glora is not None else layer_scalar(layer, "default")


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_scalar_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch, algo):
    path = _file(pipe, tmp_path, monkeypatch, algo)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    made = _network(pipe, tmp_path, monkeypatch, algo)
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs) and all(float(m.scalar.detach()) == 1.0 for m in theirs.values())
    extra = " ".join(f'"{k}={v}"' for k, v in ALGOS[algo].items())
    args = (
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=preset.toml" "conv_dim=4" '
        f'"conv_alpha=2" "use_scalar=True" {extra}'
    )
    plan = kit.converted_plan(tmp_path, args)
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
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            moved += not torch.allclose(layer(x), base(x), atol=1e-4)
    assert moved > len(in_file) // 2  # a random scalar near 0 folded in can leave a module near its base

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: not k.endswith(".alpha")), "the run trained the factors"


def test_an_entry_use_scalar_file_starts_as_lycoris_loads_it(pipe, tmp_path, monkeypatch):
    """A preset file's map entry with its own use_scalar (the Transformer2DModel class's LoConModules, the
    network's off): the block's `scalar = "on"`, and after loading the file every one of those layers'
    scalar is 1, as LyCORIS's load hook sets it; the file's modules compute what LyCORIS's loaded ones do."""
    entry = '\n[module_algo_map.Transformer2DModel]\nalgo = "locon"\nuse_scalar = true\n'
    monkeypatch.setattr(kit, "PRESET", kit.PRESET + entry)
    args = {"conv_dim": "4", "conv_alpha": "2"}
    made = kit.network(pipe, tmp_path, monkeypatch, algo="locon", **args)
    assert {bool(isinstance(m.scalar, nn.Parameter)) for m in made.unet_loras} == {True, False}
    path = kit.save_state(kit.moved_state(made, seed=12, scale=0.1), tmp_path, drop=6)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    theirs_made = kit.network(pipe, tmp_path, monkeypatch, algo="locon", **args)
    theirs_made.load_weights(str(path))
    theirs = _lycoris_modules(theirs_made)
    plan = kit.converted_plan(
        tmp_path,
        '--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset=preset.toml" '
        '"conv_dim=4" "conv_alpha=2"',
    )
    assert not plan.adapter.scalar and any(b.scalar == "on" for b in plan.adapter.blocks)
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    scaled = [name for name, m in theirs.items() if isinstance(m.scalar, nn.Parameter)]
    assert scaled and all(float(_scalar(ours[name]).detach()) == 1.0 for name in scaled)
    for name, lyco in theirs.items():
        if name not in in_file:
            continue
        layer = ours[name]
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
