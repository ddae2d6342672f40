"""LyCORIS GLoRA's switches (runtime/lycoris_glora.py: use_scalar, module_dropout, bypass_mode with its
rank_dropout and dropout) against lycoris-lora's GLoRAModule built with them: on fixed tensors, in training
mode with the global generator reseeded before each forward (both draw from it, in LyCORIS's order), the same
output and gradients; the export (scalar folded into a2 / b2) loaded by LyCORIS's loader giving the trained
weight; then a tiny SD model trains with them, resumes bit-exact and loads back in LyCORIS's kohya loader."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

glora = pytest.importorskip("lycoris.modules.glora")

RANK, ALPHA = 3, 1.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 24)
        self.conv = nn.Conv2d(16, 12, 3, padding=1, stride=2)


def _inputs(generator):
    return {
        "proj": torch.randn(2, 5, 40, generator=generator),  # tokens: LyCORIS's rank mask on the last axis
        "conv": torch.randn(2, 16, 7, 6, generator=generator),
    }


SWITCHES = [
    {"scalar": True},
    {"module_dropout": 0.5},
    {"bypass": True},
    {"bypass": True, "scalar": True, "rank_dropout": 0.6, "dropout": 0.3},
    {"bypass": True, "rank_dropout": 0.5, "module_dropout": 0.4},
]


def _theirs(switches: dict) -> dict:
    return {
        "use_scalar": switches.get("scalar", False),
        "bypass_mode": switches.get("bypass", False),
        "rank_dropout": switches.get("rank_dropout", 0.0),
        "module_dropout": switches.get("module_dropout", 0.0),
        "dropout": switches.get("dropout", 0.0),
    }


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_glora_switches_equal_lycoris_glora_module(switches):
    from dbspec.runtime.lycoris_glora import glora_config

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    inject_adapter_in_model(
        glora_config(["proj", "conv"], RANK, ALPHA, **switches), net, adapter_name="default"
    )
    net.train()
    generator = torch.Generator().manual_seed(2)
    x = _inputs(generator)
    for name in x:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        if switches.get("scalar"):  # scalar 0 with a2 and b2 random: the base model still
            assert float(layer.lora_glora_scalar["default"].detach()) == 0.0
            assert layer.lora_glora_a2["default"].abs().sum() > 0 < layer.lora_glora_b2["default"].abs().sum()
            with torch.no_grad():
                torch.testing.assert_close(layer(x[name]), reference(x[name]))
        lyco = glora.GLoRAModule(name, reference, 1.0, lora_dim=RANK, alpha=ALPHA, **_theirs(switches))
        ours = layer.lycoris_weights("default")
        with torch.no_grad():
            for key in ours:
                part = getattr(layer, "lora_glora_" + key.split(".")[0])["default"]
                part.copy_(torch.randn(part.shape, generator=generator) * 0.3)
                getattr(lyco, key.split(".")[0]).weight.copy_(part)
            if switches.get("scalar"):
                layer.lora_glora_scalar["default"].fill_(0.7)
                lyco.scalar.fill_(0.7)
        lyco.apply_to()
        lyco.train()
        outputs = []
        for seed in range(6):  # several draws: module dropout both ways, different rank masks
            torch.manual_seed(seed)
            out = layer(x[name])
            torch.manual_seed(seed)
            ref = reference(x[name])
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            outputs.append(out)
            if not out.requires_grad:  # module dropout: the (frozen) base layer alone, LyCORIS's too
                torch.testing.assert_close(ref, layer.base_layer(x[name]))
                continue
            weights = torch.randn(out.shape, generator=generator)
            (out * weights).sum().backward()
            (ref * weights).sum().backward()
            for key in ours:
                mine = getattr(layer, "lora_glora_" + key.split(".")[0])["default"].grad
                theirs = getattr(lyco, key.split(".")[0]).weight.grad
                assert (mine is None) == (theirs is None)
                if mine is not None:
                    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
            if switches.get("scalar"):
                torch.testing.assert_close(
                    layer.lora_glora_scalar["default"].grad, lyco.scalar.grad, rtol=1e-4, atol=1e-5
                )
        if any(switches.get(k) for k in ("rank_dropout", "dropout", "module_dropout")):
            assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # the draws act
        layer.eval(), lyco.eval()  # no dropout: the merged weight, and the export loaded by LyCORIS
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            theirs = lyco.get_merged_weight()[0]
            torch.testing.assert_close(merged.base_layer.weight, theirs, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-5)
            saved = {k: v.detach() for k, v in layer.lycoris_weights("default").items()}
            state = {k: v.detach() for k, v in lyco.custom_state_dict().items()}
            for key, value in saved.items():  # LyCORIS's own file: the scalar folded into a2 / b2
                torch.testing.assert_close(value, state[key])
            weights = [saved.get(k) for k in glora.GLoRAModule.weight_list[:-1]]
            loaded = glora.GLoRAModule.make_module_from_state_dict(
                name, copy.deepcopy(getattr(base, name)), *weights, torch.tensor(ALPHA)
            )
            torch.testing.assert_close(loaded.get_merged_weight()[0], theirs, rtol=1e-5, atol=1e-5)


def test_glora_rank_dropout_keeps_the_ranks_drawn_below_the_rate():
    """LyCORIS's `<`: at rank_dropout 0.1 most ranks are dropped (a kohya run's, exactly)."""
    from dbspec.runtime.lycoris_glora import glora_config

    torch.manual_seed(0)
    net = Net()
    inject_adapter_in_model(
        glora_config(["proj"], 64, 64.0, bypass=True, rank_dropout=0.1), net, adapter_name="default"
    )
    layer = net.proj
    with torch.no_grad():
        layer.lora_glora_b2["default"].normal_()
    layer.train()
    x = torch.randn(1, 40)
    torch.manual_seed(3)
    expected_b = torch.rand(64) < 0.1, torch.rand(64) < 0.1
    kept = expected_b[1]
    seen = []
    layer.lora_glora_b1["default"].register_hook(lambda g: seen.append(g))
    torch.manual_seed(3)
    layer(x).sum().backward()
    # b1's gradient column r is (b2 x)_r masked: nonzero exactly for the kept ranks
    assert torch.equal(seen[0].abs().sum(0) > 0, kept) and int(kept.sum()) < 32


GLORA = (
    'kind = "glora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\nscalar = true\nbypass = true\n'
    "rank_dropout = 0.7\ndropout = 0.1\nmodule_dropout = 0.2\n",
    {
        "algo": "glora",
        "conv_dim": "2",
        "conv_alpha": "1",
        "use_scalar": "True",
        "bypass_mode": "True",
    },  # the dropouts are not in kohya's metadata here, as for the other kinds
    {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"},
)


def test_glora_switches_train_resume_bit_exact_and_load_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check: LyCORIS's kohya loader builds GLoRAModules from the file (scalar folded in)."""
    others = lycoris_runs._lycoris_weight

    def glora_weight(lyco) -> torch.Tensor:
        if type(lyco).__name__ == "GLoRAModule":
            with torch.no_grad():
                return lyco.get_merged_weight()[0]
        return others(lyco)

    monkeypatch.setitem(lycoris_runs.KINDS, "glora_switches", GLORA)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", glora_weight)
    lycoris_runs.test_adapter_trains_resumes_bit_exact_and_loads_back_in_lycoris(
        tmp_path, "glora_switches", loader
    )
