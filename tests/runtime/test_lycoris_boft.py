"""LyCORIS's algo=boft (runtime/lycoris_boft.py) against lycoris-lora's ButterflyOFTModule: the same block
split and stage count as its power2factorization, the same forward and gradients on fixed random blocks (COFT
bound and rescale too), peft's merge equal to its merged weight, the export its state dict; then a tiny SD
model trains, resumes bit-exact and loads back in LyCORIS's kohya loader (tests/runtime/test_lycoris.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

boft = pytest.importorskip("lycoris.modules.boft")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 64)  # 16 blocks of 4 rows: 5 stages
        self.conv = nn.Conv2d(16, 32, 3, padding=1)  # 8 blocks of 4 rows: 4 stages


def _inputs(generator):
    return {
        "proj": torch.randn(3, 40, generator=generator),
        "conv": torch.randn(2, 16, 6, 5, generator=generator),
    }


def test_power2_factorization_is_lycoris():
    from lycoris.functional.general import power2factorization

    from dbspec.runtime.lycoris_boft import power2_factorization

    for dimension in range(2, 300):
        for factor in (-1, 2, 3, 4, 6, 8, 16, 64):
            m, n = power2factorization(dimension, factor)
            assert power2_factorization(dimension, factor) == ((m, n) if n else (0, 0)), (dimension, factor)


@pytest.mark.parametrize(
    ("block", "constraint", "rescaled"), [(4, 0.0, False), (6, 0.0, True), (4, 1e-3, True)]
)
def test_boft_layer_equals_lycoris_butterfly_module(block, constraint, rescaled):
    """Random blocks (and rescale): ButterflyOFTModule holding them gives the same forward and the same
    gradients; peft's merge gives its merged weight; the export is its state dict."""
    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="boft",
        conv_targets=("conv",),
        oft_block_size=block,
        oft_constraint=constraint,
        oft_rescaled=rescaled,
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    x = _inputs(torch.Generator().manual_seed(1))
    for name in x:  # untrained: every R = I, the base model
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    _randomise(net, torch.Generator().manual_seed(2))
    exported = {name: (weights, alpha) for name, weights, alpha in _layers(net)}
    for name in x:
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = boft.ButterflyOFTModule(
            name, reference, 1.0, lora_dim=block, constraint=constraint, rescaled=rescaled
        )
        blocks = layer.lora_oft_blocks["default"]
        assert lyco.oft_blocks.shape == blocks.shape and blocks.shape[0] > 1
        with torch.no_grad():
            lyco.oft_blocks.copy_(blocks)
            if rescaled:
                lyco.rescale.copy_(layer.lora_oft_rescale["default"])
        lyco.apply_to()
        ours, theirs = layer(x[name]), reference(x[name])
        assert not torch.allclose(ours, layer.base_layer(x[name]), atol=1e-3)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(4))
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(blocks.grad, lyco.oft_blocks.grad, rtol=1e-4, atol=1e-5)
        if rescaled:
            torch.testing.assert_close(
                layer.lora_oft_rescale["default"].grad, lyco.rescale.grad, rtol=1e-4, atol=1e-5
            )
        weights, alpha = exported[name]
        saved = lyco.state_dict()
        assert {*weights, "alpha"} == set(saved) and alpha == pytest.approx(float(saved["alpha"]))
        for key in weights:
            assert torch.equal(weights[key], saved[key])
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(
                merged.base_layer.weight, lyco.get_merged_weight()[0], rtol=1e-5, atol=1e-5
            )
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)


def test_a_width_with_no_butterfly_split_is_refused():
    adapter = AdapterPlan(kind="boft", oft_block_size=4)
    with pytest.raises(ValueError, match="cannot split the 48 output rows of `0` with block_size"):
        add_lora(nn.Sequential(nn.Linear(8, 48)), adapter, ("0",), seed=0)


def _randomise(net: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(
                    torch.randn(p.shape, generator=generator) * 0.3
                    + (1.0 if p.dim() > 1 and p.shape[1] == 1 else 0.0)
                )


BOFT = (
    'kind = "boft"\nblock_size = 4\nconstraint = 0.5\nrescaled = true\nconv_targets = ["conv1", "conv2"]\n',
    {"algo": "boft", "conv_dim": "1", "constraint": "0.5", "rescaled": "True"},
    {"oft_blocks", "rescale", "alpha"},
)


def test_boft_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, loader, monkeypatch):  # noqa: F811
    """test_lycoris's check: LyCORIS's kohya loader builds ButterflyOFTModules from the file."""
    others = lycoris_runs._lycoris_weight

    def boft_weight(lyco) -> torch.Tensor:
        if type(lyco).__name__ == "ButterflyOFTModule":
            with torch.no_grad():
                return lyco.get_merged_weight()[0]
        return others(lyco)

    monkeypatch.setitem(lycoris_runs.KINDS, "boft", BOFT)
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", boft_weight)
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, "boft", loader, steps=2)
