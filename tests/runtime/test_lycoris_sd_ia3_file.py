"""lycoris.kohya --network_weights with a LyCORIS IA^3 file (`weight` / `on_input`) on SD 1.x (issue 12;
runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's IA3Modules on the tiny U-Net and CLIP over a preset
file, every scale moved at random, saved as its network saves them (some modules left out). kohya's steps,
create_network (algo=ia3, the same preset), apply_to, load_weights (`load_state_dict(strict=False)`: IA3Module
has no load hook, so a module the file lacks keeps its 0 scales), and dbspec's converted run start every
layer alike; a tiny run from the file trains; a scale of another shape fails."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules

ARGS = '--network_args "algo=ia3" "preset=preset.toml"'


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch):
    return kit.network(pipe, folder, monkeypatch, algo="ia3")


def _ia3_file(pipe, folder, monkeypatch, drop: int = 0):
    return kit.saved_file(_network(pipe, folder, monkeypatch), folder, seed=5, scale=0.1, drop=drop)


def _ours(comps) -> dict[str, nn.Module]:
    from dbspec.runtime.lycoris_ia3 import Ia3Layer

    return kit.kohya_layers(comps, Ia3Layer)


def _plan(tmp_path):
    plan = kit.converted_plan(tmp_path, ARGS)
    assert plan.adapter.kind == "ia3" and plan.adapter.init_partial
    return plan


def test_ia3_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch):
    path = _ia3_file(pipe, tmp_path, monkeypatch, drop=6)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    made = _network(pipe, tmp_path, monkeypatch)
    loaded = made.load_weights(str(path))
    assert loaded and set(loaded) == {"missing keys"}  # strict=False: the left-out modules keep their 0
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    plan = _plan(tmp_path)
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        torch.testing.assert_close(layer.lora_ia3["default"], lyco.weight.detach(), rtol=0, atol=0, msg=name)
        assert bool(torch.count_nonzero(lyco.weight)) == (name in in_file), name
        base = layer.get_base_layer()
        convs += isinstance(base, nn.Conv2d)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    assert convs, "convolutions start from the file too"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    start = load_file(str(path))
    assert kit.trained(saved, start, lambda k: k.endswith(".weight")), "the run trained the scales"


def test_ia3_scale_of_another_shape_fails_naming_the_tensor(pipe, tmp_path, monkeypatch):
    path = _ia3_file(pipe, tmp_path, monkeypatch)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.weight"))
    state[key] = state[key][:-1].contiguous()
    save_file(state, str(path))
    made = _network(pipe, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    with pytest.raises(ValueError, match=rf"`{key}` has shape \[\d+\]; the run's layer has"):
        _loaded(_plan(tmp_path))
