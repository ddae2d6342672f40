"""LyCORIS's bypass_mode on IA^3 (plan.adapter.bypass; runtime/lycoris_ia3.py, issue 12) against lycoris-lora
4.1.3's IA3Module built with bypass_mode=True: on the output side the layer's output, its bias included,
times (1 + w); on the input side the layer on x times (1 + w). On fixed random scales, linear (token) and
convolution layers with biases, both sides: the same output and gradients; not the default forward's output
where the bias shows; the merged layer giving that output and unmerging back to the base; the export
IA3Module's state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora

modules = pytest.importorskip("lycoris.modules")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 12)
        self.conv = nn.Conv2d(6, 10, 3, padding=1)
        self.conv_in = nn.Conv2d(6, 10, 3, padding=1)


def _inputs(generator):
    return {
        "proj": torch.randn(2, 5, 12, generator=generator),
        "fc2": torch.randn(2, 5, 20, generator=generator),
        "conv": torch.randn(2, 6, 5, 4, generator=generator),
        "conv_in": torch.randn(2, 6, 5, 4, generator=generator),
    }


def test_ia3_bypass_equals_lycoris_bypass_forward():
    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for layer in net.children():
            layer.bias.normal_()  # a bias well away from 0: the scaling of it shows
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="ia3", conv_targets=("conv", "conv_in"), input_targets=("fc2", "conv_in"), bypass=True
    )
    add_lora(net, adapter, ("proj", "fc2"), seed=3, conv=True)
    x = _inputs(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for name in x:  # untrained: every scale 0, the base model
        layer = getattr(net, name)
        assert layer.ia3_bypass
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), getattr(base, name)(x[name]))
            scale = layer.lora_ia3["default"]
            scale.copy_(torch.randn(scale.shape, generator=g) * 0.3)
    exported = {name: weights for name, weights, _ in _layers(net)}
    for name in x:
        layer = getattr(net, name)
        on_input = name in ("fc2", "conv_in")
        reference = copy.deepcopy(getattr(base, name))
        lyco = modules.IA3Module(name, reference, 1.0, bypass_mode=True, train_on_input=on_input)
        assert lyco.bypass_mode
        with torch.no_grad():
            lyco.weight.copy_(layer.lora_ia3["default"])
        lyco.apply_to()
        ours, theirs = layer(x[name]), reference(x[name])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # the default forward (the weight alone scaled)
            weight_only = layer.base_layer(x[name]) + layer._op(x[name], layer.get_delta_weight("default"))
        if on_input:  # the same update there
            torch.testing.assert_close(ours, weight_only, rtol=1e-5, atol=1e-5)
        else:  # the bias scaled too
            assert not torch.allclose(ours, weight_only, atol=1e-3)
        weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(4))
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(layer.lora_ia3["default"].grad, lyco.weight.grad, rtol=1e-4, atol=1e-5)
        saved = lyco.state_dict()
        assert exported[name].keys() == {"weight", "on_input"}
        for key, value in exported[name].items():
            assert torch.equal(value, saved[key]), key
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(merged(x[name]), theirs, rtol=1e-5, atol=1e-5)
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)
        torch.testing.assert_close(merged.base_layer.bias, getattr(base, name).bias)


IA3_BYPASS_SPEC = """
[adapter]
kind = "ia3"
bypass = true
conv_targets = ["conv1"]
denoiser_targets = ["to_k", "to_v", "ff.net.2"]
input_targets = ["ff.net.2"]

[checkpoints]
every = 1
exports = ["kohya_lora"]
"""


def test_ia3_bypass_trains_resumes_bit_exact_and_matches_lycoris(tmp_path):
    """A tiny SD run of IA^3 in bypass_mode (output-side attention / 3x3 convolutions, input-side ff.net.2):
    two steps resume bit-exact from step 1; the export records bypass_mode and, in lycoris-lora's IA3Module
    on each exported layer in bypass mode (as kohya's bypass_mode network runs them), gives the trained
    U-Net's output, which the same modules' default forward does not."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    from dbspec.runtime.execute import execute
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec, write_spec
    from safetensors.torch import load_file

    from tests.runtime.test_lycoris import _files, _kohya_names, _unet_output

    spec = write_spec(tmp_path, steps=2, extra=IA3_BYPASS_SPEC)
    lr = ["optimizer.lr=5e-2"]
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    assert plan.adapter.bypass
    assert execute(plan, stop_after=1).status == "interrupted"
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 2
    ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
    assert ours.keys() == resumed.keys() and ours
    for name, tensors in ours.items():
        assert tensors.keys() == resumed[name].keys()
        assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        args = json.loads(handle.metadata()["ss_network_args"])
    assert args["algo"] == "ia3" and args["bypass_mode"] == "True"
    trained = whole.components.unet
    trained.eval()
    trained_output = _unet_output(trained)
    fresh = build_pipeline(plan.model.base).unet
    plain = fresh  # lycoris-lora 4.1.3's file loader cannot build IA3Module (it hands it `on_input` too):
    # IA3Module per exported layer, built as kohya's bypass_mode network builds it, holding the file's scales
    state = load_file(str(export))
    names = _kohya_names(trained, "lora_unet")
    built = []
    for key in [k for k in state if k.startswith("lora_unet_") and k.endswith(".weight")]:
        name = key.rsplit(".", 1)[0]
        on_input = bool(state[f"{name}.on_input"])
        lyco = modules.IA3Module(
            name, fresh.get_submodule(names[name]), 1.0, bypass_mode=True, train_on_input=on_input
        )
        with torch.no_grad():
            lyco.weight.copy_(state[key])
        built.append(lyco)
    assert {m.train_input for m in built} == {False, True} and len(built) == len(names)
    for lyco in built:
        lyco.apply_to()
    torch.testing.assert_close(_unet_output(plain), trained_output, rtol=1e-4, atol=1e-4)
    for lyco in built:  # the modules' default forward: the biases unscaled
        lyco.bypass_mode = False
    assert not torch.allclose(_unet_output(plain), trained_output, atol=1e-4)
