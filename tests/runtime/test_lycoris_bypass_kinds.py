"""What lycoris.kohya's `bypass_mode` changes for each LyCORIS module class (lycoris-lora 4.1.3), the ground
for converting it in a run of several kinds (convert/kohya/lycoris_maps.py `_BYPASS_INERT`; issue 12): with no
dropout and no weight decomposition (a run of several kinds keeps both off, DBS578), LoConModule's,
LohaModule's, LokrModule's and GLoRAModule's bypass forward gives their rebuilt forward's outputs and
gradients, so bypass_mode is inert on their layers; DiagOFTModule's and ButterflyOFTModule's (the bias rotated
too), DyLoraModule's (its scale dropped) and IA3Module's (the bias scaled) outputs differ, so it stays refused
where they train; FullModule raises on it (kohya stops: DBS402)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from lycoris.modules.boft import ButterflyOFTModule
from lycoris.modules.diag_oft import DiagOFTModule
from lycoris.modules.dylora import DyLoraModule
from lycoris.modules.full import FullModule
from lycoris.modules.glora import GLoRAModule
from lycoris.modules.ia3 import IA3Module
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

CLASSES = {
    "lora": (LoConModule, {}),
    "loha": (LohaModule, {}),
    "lokr": (LokrModule, {}),
    "glora": (GLoRAModule, {}),
    "diag-oft": (DiagOFTModule, {}),
    "boft": (ButterflyOFTModule, {}),
    "dylora": (DyLoraModule, {"block_size": 4}),
    "ia3": (IA3Module, {}),
}


def _both(algo: str, conv: bool):
    """The module of `algo` built with and without bypass_mode on one Linear (or 3x3 convolution) with a
    bias, every trained tensor the same random values; their training-mode outputs and the gradients of the
    trained tensors on one loss."""
    cls, kw = CLASSES[algo]
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(8, 16, 3, padding=1) if conv else torch.nn.Linear(16, 32)
    x = torch.randn(2, 8, 6, 6) if conv else torch.randn(3, 16)
    results = []
    for bypass in (False, True):
        torch.manual_seed(1)
        module = cls("m", copy.deepcopy(layer), 1.0, 4, 2.0, bypass_mode=bypass, **kw)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if not name.startswith("org"):
                    p.add_(torch.randn_like(p) * 0.1)
        module.apply_to()
        module.train()
        random.seed(3)  # DyLoraModule draws its block from Python's random
        out = module(x)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    return results


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "glora"])
def test_bypass_mode_changes_nothing_without_dropouts(algo, conv):
    (plain, plain_grads), (bypass, bypass_grads) = _both(algo, conv)
    assert not torch.allclose(plain, torch.zeros_like(plain))
    torch.testing.assert_close(bypass, plain, rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == bypass_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(bypass_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("algo", ["diag-oft", "boft", "dylora", "ia3"])
def test_bypass_mode_changes_these_layers(algo):
    (plain, _), (bypass, _) = _both(algo, False)
    assert (bypass - plain).abs().max() > 1e-3


def test_full_module_refuses_bypass_mode():
    """create_network hands FullModule the network's bypass_mode (True, never None): it raises."""
    with pytest.raises(ValueError, match="bypass mode is not supported"):
        FullModule("m", torch.nn.Linear(16, 32), 1.0, 4, 2.0, bypass_mode=True)
    FullModule("m", torch.nn.Linear(16, 32), 1.0, 4, 2.0, bypass_mode=False)
