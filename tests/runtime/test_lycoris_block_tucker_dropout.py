"""A block's own Tucker form (a LyCORIS preset entry's `use_tucker`) with the network's module and rank
dropout (issue 12; was DBS403, a spec's DBS579).

lycoris-lora 4.1.3's LoConModule / LohaModule with use_tucker draw as without it: `torch.rand(1) <
module_dropout` first (the layer skipped), then in the default forward LoCon's row mask over the rebuilt
Tucker update (make_weight's `torch.rand(out)`), LoHa's over its Tucker product (get_weight's). dbspec's
Tucker layers of a block (runtime/locon_tucker.py's TuckerConv2d under lora_dropout.py's LyCORIS form; peft's
LoHa in its Tucker form under loha_weight.py) draw the same, as the adapter's own Tucker layers do. Checked on
a k x k convolution against the LyCORIS module holding the same factors: outputs and gradients over a series
of seeded training steps (both the skipped and the kept branches drawn), and the torch generator after."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime import test_lycoris_switches as switches

pytest.importorskip("lycoris.modules")

# (adapter kind, module_dropout, rank_dropout)
CASES = [
    ("lora", 0.4, 0.0),  # entry_use_tucker_with_module_dropout
    ("lora", 0.0, 0.3),
    ("lora", 0.4, 0.3),
    ("loha", 0.0, 0.3),  # entry_use_tucker_with_rank_dropout
    ("loha", 0.4, 0.0),
    ("loha", 0.4, 0.3),
]


def _ours(kind: str, module_dropout: float, rank_dropout: float):
    """(the Net with the adapter on its Linear and k x k convolution, the convolution's block giving it the
    Tucker form, an untouched copy)."""
    torch.manual_seed(0)
    net = switches.Net()
    base = copy.deepcopy(net)
    rank, alpha = switches.RANK, switches.ALPHA
    block = BlockPlan(pattern="conv", rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha, tucker="on")
    adapter = AdapterPlan(
        kind=kind, rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=alpha, conv_targets=("conv",),
        blocks=(block,), module_dropout=module_dropout, rank_dropout=rank_dropout,
        rank_dropout_form="lycoris" if kind == "lora" else "kohya",
    )  # fmt: skip
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    if kind == "lora":  # runtime/prepare.py: LoConModule's draws (rank_dropout_form "lycoris")
        add_lora_dropout(net, rank_dropout, module_dropout, 1.0, 0.0, "lycoris", 0.0)
    switches._randomise(net, torch.Generator().manual_seed(11))
    return net, base


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_block_tucker_layer_draws_dropouts_as_lycoris(case):
    kind, module_dropout, rank_dropout = case
    net, base = _ours(kind, module_dropout, rank_dropout)
    layer = net.conv
    assert set(layer.state_dict()) & {"lora_mid.default.weight", "hada_t1.default"}  # the block's Tucker form
    assert not any("lora_mid" in k or "hada_t1" in k for k in net.proj.state_dict())
    theirs = switches._lycoris(
        kind, "conv", copy.deepcopy(base.conv), use_tucker=True, module_dropout=module_dropout,
        rank_dropout=rank_dropout,
    )  # fmt: skip
    assert set(theirs.state_dict()) & {"lora_mid.weight", "hada_t1"}
    switches._copy_into(theirs, layer, scalar=False)
    theirs.apply_to()
    x = switches._inputs(torch.Generator().manual_seed(5))["conv"]
    layer.train(), theirs.train()
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    skipped = kept = 0
    for step in range(12):
        outputs, grads, states = [], [], []
        for module, named in ((layer, params), (theirs, dict(theirs.named_parameters()))):
            torch.manual_seed(100 + step)
            for p in named.values():
                p.grad = None
            out = module(x)
            if out.requires_grad:  # a skipped module returns the frozen base's output alone
                out.square().mean().backward()
            outputs.append(out.detach())
            grads.append({n: p.grad for n, p in named.items() if p.grad is not None})
            states.append(torch.get_rng_state())
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(states[0], states[1])  # the same draws
        ours, their = grads
        if not their:  # the module skipped: the base output alone, no adapter gradient
            assert not ours or all(torch.count_nonzero(g) == 0 for g in ours.values())
            skipped += 1
            continue
        kept += 1
        for key in their:
            if key.startswith("org_") or key == "alpha":
                continue
            mine = switches._ours(layer, key)
            name = next(n for n, p in params.items() if p is mine)
            torch.testing.assert_close(ours[name], their[key], rtol=1e-4, atol=1e-6, msg=key)
    assert kept and (skipped or not module_dropout)
    with torch.no_grad():  # outside training: no draw, the whole update
        layer.eval(), theirs.eval()
        out = layer(x)
        torch.testing.assert_close(out, theirs(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, base.conv(x), atol=1e-3)
