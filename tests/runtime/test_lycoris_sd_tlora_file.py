"""lycoris.kohya --network_weights with a LyCORIS T-LoRA file (`q_layer.weight`, `p_layer.weight`,
`lambda_layer`, `alpha`) on SD 1.x (issue 12; runtime/lycoris_whole_init.py): lycoris-lora 4.1.3's
TLoraModules (algo=tlora, preset attn-mlp) on the tiny U-Net and CLIP, every trained tensor moved at random
and the alphas tripled, saved as its network saves them (some modules left out). kohya's steps, create_network
(the same dims and preset), apply_to, load_weights (`load_state_dict(strict=False)`: a module the file lacks
keeps its SVD start; every module's frozen start, never in the file, stays the base model's SVD; the file's
`alpha` fills a buffer the forward never reads) and dbspec's converted run start every layer alike (tensors
equal, outputs to 1e-5). One tiny run from the file, with `--scale_weight_norms`, `module_dropout` and
`bypass_mode` with its `dropout` (the runtime checks of each against TLoraModule: test_lycoris_tlora.py),
trains; a file of another rank fails
naming the tensor, as lycoris-lora fails."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _convert, _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
tlora = pytest.importorskip("lycoris.modules.tlora")

ARGS = '--network_dim=4 --network_alpha=2 --network_args "algo=tlora" "preset=attn-mlp"'
TENSORS = {
    "q_layer.weight": "lora_tlora_q",
    "p_layer.weight": "lora_tlora_p",
    "lambda_layer": "lora_tlora_lambda",
}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, monkeypatch, dim: int = 4):
    """kohya's steps: create_network(1.0, dim, 2.0, ..., algo=tlora, preset=attn-mlp), apply_to."""
    monkeypatch.setattr(tlora, "gc", types.SimpleNamespace(collect=lambda: 0))  # test_lycoris_tlora's _no_gc
    kept_lycoris_presets(monkeypatch)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(1.0, dim, 2.0, None, named, unet, algo="tlora", preset="attn-mlp")
    made.apply_to(named, unet, True, True)
    return made


def _file(pipe, folder, monkeypatch, drop: int = 0, dim: int = 4):
    state = kit.moved_state(_network(pipe, monkeypatch, dim), seed=8, scale=0.05)
    # alphas other than the network's: TLoraModule keeps the scale it was built with
    state |= {k: v * 3 for k, v in state.items() if k.endswith(".alpha")}
    return kit.save_state(state, folder, drop)


def _plan(tmp_path, extra: str = ""):
    from tests.unit.convert_kit import plan_of

    plan = plan_of(_convert(tmp_path, ARGS + extra), tmp_path, kit.OVERRIDES)
    assert plan.adapter.kind == "tlora" and plan.adapter.init_partial and plan.adapter.init_weights
    return plan


def test_tlora_file_starts_as_lycoris_loads_it(pipe, tmp_path, monkeypatch):
    from dbspec.runtime.lycoris_tlora import TloraLayer

    path = _file(pipe, tmp_path, monkeypatch, drop=5)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    assert not any("base_" in k for k in state)  # LyCORIS's file never holds the frozen start
    made = _network(pipe, monkeypatch)
    loaded = made.load_weights(str(path))
    assert set(loaded) == {"missing keys"}  # the frozen starts and the left-out modules
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    assert all(float(m.alpha) == 3 * m.scale * m.lora_dim for n, m in theirs.items() if n in in_file)
    comps, count = _loaded(_plan(tmp_path))
    assert count == len(in_file)
    ours = kit.kohya_layers(comps, TloraLayer)
    assert sorted(ours) == sorted(theirs)
    for name, lyco in theirs.items():
        layer = ours[name]
        mine = layer.lycoris_weights("default")
        for key, part in TENSORS.items():
            want = lyco.state_dict()[key]
            torch.testing.assert_close(mine[key].detach(), want, rtol=0, atol=0, msg=name)
            assert torch.equal(getattr(layer, part)["default"], mine[key])
        for base, buffer in (("base_q", "lora_tlora_base_q"), ("base_p", "lora_tlora_base_p")):
            torch.testing.assert_close(getattr(layer, buffer)["default"], getattr(lyco, base), rtol=0, atol=0)
        layer.eval(), lyco.eval()
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            moved = not torch.allclose(layer(x), layer.get_base_layer()(x), atol=1e-4)
            assert moved == (name in in_file), name


def test_tlora_file_trains_with_max_norm_module_dropout_and_bypass(pipe, tmp_path, monkeypatch):
    path = _file(pipe, tmp_path, monkeypatch)
    state = load_file(str(path))
    extra = ' "module_dropout=0.5" "bypass_mode=True" "dropout=0.1" --scale_weight_norms=0.5'
    a = _plan(tmp_path, extra).adapter
    assert (a.module_dropout, a.max_norm, a.max_norm_form) == (0.5, 0.5, "lycoris")
    assert (a.bypass, a.bypass_dropout) == (True, 0.1)
    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert kit.trained(saved, state, lambda k: k.endswith(".lambda_layer")), "the run trained T-LoRA"
    rows = [json.loads(line) for line in (Path(whole.output) / "metrics.jsonl").read_text().splitlines()]
    scaled = [r["max_norm/keys_scaled"] for r in rows if "loss" in r]
    assert scaled and all(n > 0 for n in scaled), scaled  # the moved file's updates are above 0.5


def test_tlora_file_of_another_rank_fails_naming_the_tensor(pipe, tmp_path, monkeypatch):
    path = _file(pipe, tmp_path, monkeypatch, dim=2)
    made = _network(pipe, monkeypatch)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    with pytest.raises(
        ValueError, match=r"tensor `lora_\w+\.q_layer\.weight` has shape \[[\d, ]+\]; the run"
    ):
        _loaded(_plan(tmp_path))
