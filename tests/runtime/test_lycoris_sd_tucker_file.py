"""lycoris.kohya --network_weights with a LyCORIS LoCon file in its Tucker form (use_tucker: each 3x3
convolution's 1x1 `lora_down`, 3x3 `lora_mid`, 1x1 `lora_up`) on SD 1.x (issue 12; runtime/init_weights.py,
locon_tucker.py): lycoris-lora 4.1.3's LoConModules over a preset file on the tiny U-Net and CLIP, every
factor moved at random, saved as its network saves them (some modules left out). kohya's steps,
create_network (algo=locon, use_tucker, the same dims, alphas and preset), apply_to, load_weights
(`load_state_dict(strict=False)`: a module the file lacks keeps its init; LoConModule's load hook only resets
its scalar to 1) and dbspec's converted run start every layer alike (outputs to 1e-5); a tiny run from the
file trains and resumes bit for bit; a file without `lora_mid` (a plain LoCon's 3x3 lora_down) is refused at
plan time naming the tensor, as torch's size mismatch stops kohya."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_sd_full_file import _convert, _lycoris_modules, _named

lycoris_kohya = pytest.importorskip("lycoris.kohya")
ARGS = (
    '--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset=preset.toml" "conv_dim=4" '
    '"conv_alpha=2" "use_tucker=True"'
)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch, tucker: str = "True"):
    return kit.network(
        pipe, folder, monkeypatch, algo="locon", conv_dim="4", conv_alpha="2", use_tucker=tucker
    )


def _file(pipe, folder, monkeypatch, drop: int = 0, tucker: str = "True"):
    return kit.saved_file(_network(pipe, folder, monkeypatch, tucker), folder, seed=7, scale=0.1, drop=drop)


def _ours(comps) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return kit.kohya_layers(comps, LoraLayer, adapter=True)


def test_tucker_file_starts_as_lycoris_loads_it_trains_and_resumes(pipe, tmp_path, monkeypatch):
    from dbspec.runtime.locon_tucker import TuckerConv2d

    path = _file(pipe, tmp_path, monkeypatch, drop=6)
    state = load_file(str(path))
    in_file = {k.split(".")[0] for k in state}
    assert any(k.endswith(".lora_mid.weight") for k in state)
    made = _network(pipe, tmp_path, monkeypatch)
    assert set(made.load_weights(str(path))) == {"missing keys"}  # the left-out modules keep their init
    theirs = _lycoris_modules(made)
    assert in_file < set(theirs)
    plan = kit.converted_plan(tmp_path, ARGS)
    assert plan.adapter.kind == "lora" and plan.adapter.tucker and plan.adapter.init_partial
    comps, count = _loaded(plan)
    assert count == len(in_file)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    tucker = 0
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        if isinstance(layer, TuckerConv2d) and name in in_file:  # else each its own random init (up 0)
            tucker += 1
            mid = layer.lora_mid["default"].weight
            torch.testing.assert_close(mid, lyco.lora_mid.weight, rtol=0, atol=0, msg=name)
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
            if name in in_file:
                assert not torch.allclose(layer(x), base(x), atol=1e-4), name
    assert tucker, "Tucker convolutions start from the file's lora_mid"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    mids = kit.trained(saved, state, lambda k: k.endswith(".lora_mid.weight"))
    assert mids, "the run trained the middle convolutions"
    kit.resumes_bit_exact(tmp_path, whole, saved)


def test_a_plain_locon_file_does_not_start_the_tucker_form(pipe, tmp_path, monkeypatch):
    """A LoCon file without use_tucker (3x3 lora_down, no lora_mid): LyCORIS's Tucker network fails on the
    shapes; dbspec's plan names the tensor."""
    path = _file(pipe, tmp_path, monkeypatch, tucker="False")
    made = _network(pipe, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="size mismatch"):
        made.load_weights(str(path))
    from tests.unit.convert_kit import GPU, out_path

    from dbspec.frontend import plan_spec

    _convert(tmp_path, ARGS)
    planned = plan_spec(out_path(tmp_path), GPU, overrides=["model.base=builtin:tiny-sd1"])
    assert planned.plan is None
    assert any(d.code == "DBS356" and "no `lora_mid`" in d.message for d in planned.diagnostics)


def test_dim_from_weights_builds_the_tucker_form_from_the_file(pipe, tmp_path, monkeypatch):
    """--dim_from_weights: create_network_from_weights builds a LoConModule per file module, in its Tucker
    form where the file has lora_mid (make_module_from_state_dict), apply_to, load_weights (the same file
    again): dbspec's run over exactly the file's layers starts every one alike."""
    path = _file(pipe, tmp_path, monkeypatch, drop=5)
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made, _ = lycoris_kohya.create_network_from_weights(1.0, str(path), None, named, unet)
    made.apply_to(named, unet, True, True)
    assert made.load_weights(str(path)) == {}
    theirs = _lycoris_modules(made)
    assert sorted(theirs) == sorted({k.split(".")[0] for k in load_file(str(path))})
    assert any(m.tucker for m in theirs.values())
    plan = kit.converted_plan(tmp_path, "--dim_from_weights")
    assert plan.adapter.kind == "lora" and plan.adapter.tucker
    comps, count = _loaded(plan)
    assert count == len(theirs)
    ours = _ours(comps)
    assert sorted(ours) == sorted(theirs)
    for name, lyco in theirs.items():
        layer = ours[name]
        base = layer.get_base_layer()
        x = kit.sample_input(base)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), lyco(x), rtol=0, atol=1e-5, msg=name)
    whole, saved = kit.whole_run(tmp_path)  # trains (the run from the --network_weights file above resumes)
    assert whole.status == "finished"
    assert {k.split(".")[0] for k in saved} == set(theirs)
