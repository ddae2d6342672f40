"""lycoris.kohya --network_weights with a LyCORIS Diag-OFT / BOFT file (`oft_blocks`, `rescale`, `alpha`) on
SD 1.x (issue 12; runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's DiagOFTModules / ButterflyOFTModules
over a preset file on the tiny U-Net and CLIP (`rescaled`), every block and rescale moved at random, saved as
its network saves them (some modules left out). kohya's steps, create_network (the same algo, preset and
arguments), apply_to, load_weights (`load_state_dict(strict=False)`: no load hook; a module the file lacks
keeps its zero blocks and its rescale of ones; the file's `alpha` loads into a buffer the forward never
reads), and dbspec's converted run start every layer alike (blocks, rescale, outputs); a tiny run from the
file trains; blocks of another shape fail naming the tensor, as lycoris-lora fails."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules

ALGOS = ("diag-oft", "boft")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, algo: str):
    return kit.network(pipe, folder, monkeypatch, algo=algo, rescaled="True")


def _oft_file(pipe, folder, monkeypatch, algo: str, drop: int = 0):
    return kit.saved_file(_network(pipe, folder, monkeypatch, algo), folder, seed=6, scale=0.05, drop=drop)


def _ours(comps) -> dict[str, nn.Module]:
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    return kit.kohya_layers(comps, DiagOftLayer)


def _plan(tmp_path, algo: str):
    plan = kit.converted_plan(tmp_path, f'--network_args "algo={algo}" "preset=preset.toml" "rescaled=True"')
    assert plan.adapter.kind == algo and plan.adapter.init_partial and plan.adapter.oft_rescaled
    return plan


@pytest.mark.parametrize("algo", ALGOS)
def test_oft_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch, algo):
    path = _oft_file(pipe, tmp_path, monkeypatch, algo, drop=6)
    in_file = {k.split(".")[0] for k in load_file(str(path))}
    made = _network(pipe, tmp_path, monkeypatch, algo)
    loaded = made.load_weights(str(path))
    assert set(loaded) == {"missing keys"}  # strict=False: the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    plan = _plan(tmp_path, algo)
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        torch.testing.assert_close(
            layer.lora_oft_blocks["default"], lyco.oft_blocks, rtol=0, atol=0, msg=name
        )
        torch.testing.assert_close(layer.lora_oft_rescale["default"], lyco.rescale, rtol=0, atol=0, msg=name)
        assert bool(torch.count_nonzero(lyco.oft_blocks)) == (name in in_file), name
        base = layer.get_base_layer()
        convs += isinstance(base, nn.Conv2d)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "convolutions start from the file too"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    start = load_file(str(path))
    assert kit.trained(saved, start, lambda k: k.endswith(".oft_blocks")), "the run trained the blocks"


@pytest.mark.parametrize("algo", ALGOS)
def test_oft_blocks_of_another_shape_fail_naming_the_tensor(pipe, tmp_path, monkeypatch, algo):
    path = _oft_file(pipe, tmp_path, monkeypatch, algo)
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.oft_blocks"))
    state[key] = state[key][..., :-1, :-1].contiguous()  # smaller blocks
    save_file(state, str(path))
    made = _network(pipe, tmp_path, monkeypatch, algo)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    with pytest.raises(ValueError, match=rf"`{key}` has shape \[[\d, ]+\]; the run's layer has"):
        _loaded(_plan(tmp_path, algo))
