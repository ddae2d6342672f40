"""lycoris.kohya algo=lora / locon with `dora_wd` and `module_dropout` / `rank_dropout` (issue 12; was DBS403,
a spec's DBS267): LoConModule.forward with weight_decompose draws `torch.rand(1) < module_dropout` first (the
original layer alone below the rate), then make_weight masks ΔW's output rows with `torch.rand(out) >
rank_dropout`, unscaled, before the decomposition renormalises W + ΔW (runtime/lycoris_dora.py, the rates set
by runtime/lora_dropout.py). Checked against lycoris-lora 4.1.3's LoConModule on a tiny Linear and 3x3
convolution, per output row and per input column, with LoCon's Tucker form: training outputs, every factor's
and the magnitude's gradients and the generator state equal from the same generator state."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout
from dbspec.runtime.lycoris_dora import LycorisDora
from tests.runtime.test_lycoris_dora import ALPHA, KINDS, RANK, Net, _copy_random, _plan

modules = pytest.importorskip("lycoris.modules")


@pytest.mark.parametrize(
    ("kind", "layer", "axis", "module", "rank"),
    [
        ("locon_lycoris", "lin", "output", 0.4, 0.5),
        ("locon_lycoris", "conv", "input", 0.0, 0.5),
        ("locon_tucker", "conv", "output", 0.5, 0.0),
    ],
)
def test_decomposed_locon_draws_as_lycoris_module(kind, layer, axis, module, rank):
    fields, cls, extra, names = KINDS[kind]
    net = Net()
    base = copy.deepcopy(getattr(net, layer))
    plan = attrs.evolve(
        _plan(fields, axis), module_dropout=module, rank_dropout=rank, rank_dropout_form="lycoris"
    )
    add_lora(net, plan, ("lin",), seed=3, conv=True)
    assert add_lora_dropout(net, rank, module, form="lycoris") == 2  # both layers: their own forward draws
    ours = getattr(net, layer)
    assert isinstance(ours, LycorisDora)
    lyco = getattr(modules, cls)(
        f"lora_unet_{layer}",
        base,
        1.0,
        RANK,
        ALPHA,
        weight_decompose=True,
        wd_on_out=axis == "output",
        module_dropout=module,
        rank_dropout=rank,
        **extra,
    )
    _copy_random(ours, lyco, names, seed=7)
    lyco.apply_to()
    x = torch.randn(3, 64) if layer == "lin" else torch.randn(2, 32, 6, 6)
    ours.eval(), lyco.eval()
    with torch.no_grad():
        plain, whole = ours.base_layer(x), ours(x)
    ours.train(), lyco.train()
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        want = lyco.org_module[0](x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        mine = ours(x)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-5)
        skipped = torch.equal(want, plain)
        seen.add("skipped" if skipped else "whole" if torch.allclose(want, whole, atol=1e-6) else "masked")
        if not skipped:
            weights = torch.linspace(-1, 1, want.numel()).reshape(want.shape)
            (want * weights).sum().backward()
            (mine * weights).sum().backward()
    assert ("skipped" in seen) == bool(module) and ("masked" in seen) == bool(rank)
    theirs = dict(lyco.named_parameters())
    scale = ours.dora_scales()["default"]
    torch.testing.assert_close(scale.grad, theirs["dora_scale"].grad, rtol=1e-4, atol=1e-6)
    for peft_name, lyco_name in names.items():
        table = getattr(ours, peft_name, None)
        if table is None or "default" not in table:
            continue
        param = table["default"].weight
        grad = theirs[lyco_name].grad.reshape(param.shape)
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6, msg=peft_name)
    ours.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), whole)  # no draw outside training
    assert torch.equal(state, torch.get_rng_state())
