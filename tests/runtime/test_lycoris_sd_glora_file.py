"""lycoris.kohya --network_weights with a LyCORIS GLoRA file (`a1.weight`, `a2.weight`, `b1.weight`,
`b2.weight`, `alpha`) on SD 1.x (issue 12; runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's GLoRAModules
over a preset file on the tiny U-Net and CLIP (3x3 convolutions at conv_dim), every pair moved at random,
saved as its network saves them (some modules left out). kohya's steps, create_network (algo=glora, the same
dims, alphas and preset), apply_to, load_weights (`load_state_dict(strict=False)`: a module the file lacks
keeps its init; the file's `alpha` loads into a buffer the forward never reads; the load hook sets the
scalar, 1 without use_scalar, to 1) and dbspec's converted run start every layer alike (pairs equal, outputs
to 1e-5); a tiny run from the file trains; a pair of another rank fails naming the
tensor, as lycoris-lora fails."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules

ARGS = (
    '--network_dim=4 --network_alpha=1 --network_args "algo=glora" "preset=preset.toml" "conv_dim=4" '
    '"conv_alpha=2"'
)
PARTS = ("a1", "a2", "b1", "b2")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, dim: int = 4):
    return kit.network(pipe, folder, monkeypatch, dim, algo="glora", conv_dim=str(dim), conv_alpha="2")


def _file(pipe, folder, monkeypatch, drop: int = 0, dim: int = 4):
    state = kit.moved_state(_network(pipe, folder, monkeypatch, dim), seed=8, scale=0.1)
    # alphas other than the network's: GLoRAModule keeps the scale it was built with
    state |= {k: v * 3 for k, v in state.items() if k.endswith(".alpha")}
    return kit.save_state(state, folder, drop)


def _ours(comps) -> dict[str, nn.Module]:
    from dbspec.runtime.lycoris_glora import GloraLayer

    return kit.kohya_layers(comps, GloraLayer)


def _plan(tmp_path):
    plan = kit.converted_plan(tmp_path, ARGS)
    assert plan.adapter.kind == "glora" and plan.adapter.init_partial
    return plan


def test_glora_file_starts_as_lycoris_loads_it_trains(pipe, tmp_path, monkeypatch):
    path = _file(pipe, tmp_path, monkeypatch, drop=6)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    made = _network(pipe, tmp_path, monkeypatch)
    assert set(made.load_weights(str(path))) == {"missing keys"}  # the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    assert all(float(m.alpha) == 3 * m.scale * m.lora_dim for n, m in theirs.items() if n in in_file)
    comps, count = _loaded(_plan(tmp_path))
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    convs = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        if name in in_file:  # else each its own random a1 / b1 (a2, b2 at 0)
            convs += isinstance(base, nn.Conv2d) and base.kernel_size == (3, 3)
            for part in PARTS:
                mine = getattr(layer, f"lora_glora_{part}")["default"]
                torch.testing.assert_close(mine, getattr(lyco, part).weight, rtol=0, atol=0, msg=name)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert convs, "3x3 convolutions start from the file too"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: k.endswith(".b2.weight")), "the run trained the pairs"


def test_glora_file_of_another_rank_fails_naming_the_tensor(pipe, tmp_path, monkeypatch):
    path = _file(pipe, tmp_path, monkeypatch, dim=2)
    made = _network(pipe, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    with pytest.raises(
        ValueError, match=r"tensor `lora_\w+\.a1\.weight` has shape \[[\d, ]+\]; the run's layer"
    ):
        _loaded(_plan(tmp_path))
