"""LyCORIS's algo=glora layer (runtime/lycoris_glora.py) against lycoris-lora's GLoRAModule: the same
parameter shapes and starting point (the base model), the same forward and gradients once the factors are
copied over, peft's merge equal to its merged weight, and the layer's tensors under GLoRAModule's
state-dict names."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

glora = pytest.importorskip("lycoris.modules.glora")

RANK = 3


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 24)
        self.conv = nn.Conv2d(16, 12, 3, padding=1, stride=2)


def _inputs(generator):
    return {
        "proj": torch.randn(3, 40, generator=generator),
        "conv": torch.randn(2, 16, 7, 6, generator=generator),
    }


@pytest.mark.parametrize("alpha", [0.0, 1.5, -2.0])  # -2: kohya's network_alpha < 0, its sign kept
def test_glora_layer_equals_lycoris_glora_module(alpha):
    from dbspec.runtime.lycoris_glora import glora_config

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    inject_adapter_in_model(glora_config(["proj", "conv"], RANK, alpha), net, adapter_name="default")
    x = _inputs(torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    for name in x:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        with torch.no_grad():  # a2 and b2 start at zero: the base model
            torch.testing.assert_close(layer(x[name]), reference(x[name]))
        lyco = glora.GLoRAModule(name, reference, 1.0, lora_dim=RANK, alpha=alpha)
        ours = layer.lycoris_weights("default")
        theirs = {key: getattr(lyco, key.split(".")[0]).weight for key in ours}
        for key in ours:
            assert ours[key].shape == theirs[key].shape, key
            assert bool(ours[key].abs().sum() > 0) == bool(theirs[key].abs().sum() > 0), key
        with torch.no_grad():
            for key in ours:
                ours[key].copy_(torch.randn(ours[key].shape, generator=generator) * 0.3)
                theirs[key].copy_(ours[key])
        lyco.apply_to()
        out, ref = layer(x[name]), reference(x[name])
        assert not torch.allclose(out, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out.shape, generator=generator)
        (out * weights).sum().backward()
        (ref * weights).sum().backward()
        for key in ours:
            torch.testing.assert_close(ours[key].grad, theirs[key].grad, rtol=1e-4, atol=1e-5)
        assert float(layer.lora_alpha["default"]) == pytest.approx(float(lyco.alpha))
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(
                merged.base_layer.weight, lyco.get_merged_weight()[0], rtol=1e-5, atol=1e-5
            )
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


# alpha below 0 (kohya network_alpha < 0 with algo=glora): GLoRAModule keeps its sign, the export saves it and
# LyCORIS's loader builds its modules at that scale; the convolutions at a positive conv_alpha
GLORA = (
    'kind = "glora"\nrank = 2\nalpha = -1.0\nconv_rank = 2\nconv_alpha = 1.0\n',
    {"algo": "glora", "conv_dim": "2", "conv_alpha": "1"},
    {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"},
)


def test_glora_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check: LyCORIS's kohya loader builds GLoRAModules from the file."""
    others = lycoris_runs._lycoris_weight

    def glora_weight(lyco) -> torch.Tensor:
        if type(lyco).__name__ == "GLoRAModule":
            with torch.no_grad():
                return lyco.get_merged_weight()[0]
        return others(lyco)

    monkeypatch.setitem(lycoris_runs.KINDS, "glora", GLORA)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", glora_weight)
    lycoris_runs.test_adapter_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, "glora", loader)
