"""LyCORIS's weight decomposition on peft's layers (runtime/lycoris_dora.py) against LyCORIS's own modules
(lycoris-lora: LoConModule, LohaModule, LokrModule with weight_decompose, what kohya's lycoris.kohya network
builds for dora_wd, with wd_on_output): the same initial dora_scale from the same base weight, and, once the
factors and magnitudes are copied over, the same forward and the same gradients (LyCORIS does not detach
the norm, unlike peft's DoRA)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_dora import LycorisDora, axis_of, dora_scale_of

modules = pytest.importorskip("lycoris.modules")

RANK, ALPHA = 2, 1.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 48)
        self.conv = nn.Conv2d(32, 24, 3, padding=1)


# name -> (AdapterPlan fields, LyCORIS module class, its extra arguments, {peft name: LyCORIS name})
LOCON = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "lora_mid": "lora_mid.weight"}
LOHA = {n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}
LOKR = {n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")}
KINDS = {
    "loha": ({"kind": "loha"}, "LohaModule", {}, LOHA),
    "loha_tucker": ({"kind": "loha", "tucker": True}, "LohaModule", {"use_tucker": True}, LOHA),
    "lokr": ({"kind": "lokr"}, "LokrModule", {"factor": -1}, LOKR),
    "lokr_both": (
        {"kind": "lokr", "decompose_both": True},
        "LokrModule",
        {"factor": -1, "decompose_both": True},
        LOKR,
    ),
    "locon": ({"kind": "lora"}, "LoConModule", {}, LOCON),
    "locon_tucker": ({"kind": "lora", "tucker": True}, "LoConModule", {"use_tucker": True}, LOCON),
}


def _plan(fields: dict, axis: str) -> AdapterPlan:
    return AdapterPlan(
        rank=RANK,
        alpha=ALPHA,
        denoiser_targets=("lin",),
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        dora=True,
        dora_axis=axis,
        **fields,
    )


def _pair(kind: str, axis: str, layer: str):
    """(our adapted Net, LyCORIS's module on a copy of the same base layer, the name map)."""
    fields, cls, extra, names = KINDS[kind]
    net = Net()
    base = copy.deepcopy(getattr(net, layer))
    add_lora(net, _plan(fields, axis), ("lin",), seed=3, conv=True)
    lyco = getattr(modules, cls)(
        f"lora_unet_{layer}",
        base,
        1.0,
        RANK,
        ALPHA,
        weight_decompose=True,
        wd_on_out=axis == "output",
        **extra,
    )
    return net, lyco, names


def _copy_random(ours: nn.Module, lyco: nn.Module, names: dict[str, str], seed: int) -> None:
    """Random non-zero factors (and magnitudes near the base norms) into both."""
    g = torch.Generator().manual_seed(seed)
    theirs = dict(lyco.named_parameters())
    copied = 0
    with torch.no_grad():
        for peft_name, lyco_name in names.items():
            table = getattr(ours, peft_name, None)
            if table is None or "default" not in table:
                continue
            param = table["default"]
            param = param.weight if isinstance(param, nn.Module) else param
            value = torch.randn(param.shape, generator=g) * 0.3
            param.copy_(value)
            theirs[lyco_name].copy_(value.reshape(theirs[lyco_name].shape))
            copied += 1
        scale = dora_scale_of(ours, "default")
        scale.mul_(1 + 0.1 * torch.rand(scale.shape, generator=g))
        lyco.dora_scale.copy_(scale)
    assert copied >= 2


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize("layer", ["lin", "conv"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_and_gradients_equal_lycoris_module(kind, layer, axis):
    net, lyco, names = _pair(kind, axis, layer)
    ours = getattr(net, layer)
    if kind == "locon" and axis == "output":  # plain LoRA per output row keeps peft's DoRA
        assert not isinstance(ours, LycorisDora) and ours.use_dora["default"]
        return
    assert isinstance(ours, LycorisDora)
    # LyCORIS's initial magnitude: the base weight's norms on the axis, in LyCORIS's shape
    scale = dora_scale_of(ours, "default")
    assert scale.shape == lyco.dora_scale.shape and axis_of(scale.shape) == axis
    assert torch.equal(scale, lyco.dora_scale)
    assert scale.requires_grad and scale.dtype == torch.float32
    _copy_random(ours, lyco, names, seed=7)
    lyco.apply_to()
    x = torch.randn(3, 64) if layer == "lin" else torch.randn(2, 32, 6, 6)
    ours.eval(), lyco.eval()
    out, ref = ours(x), lyco.org_module[0](x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ours.base_layer(x), atol=1e-3)  # the update acts
    # gradients through the (not detached) norm: every factor and the magnitude
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    (ref * torch.linspace(-1, 1, ref.numel()).reshape(ref.shape)).sum().backward()
    theirs = dict(lyco.named_parameters())
    torch.testing.assert_close(scale.grad, theirs["dora_scale"].grad, rtol=1e-4, atol=1e-6)
    for peft_name, lyco_name in names.items():
        table = getattr(ours, peft_name, None)
        if table is None or "default" not in table:
            continue
        param = table["default"]
        param = param.weight if isinstance(param, nn.Module) else param
        theirs_grad = theirs[lyco_name].grad.reshape(param.shape)
        torch.testing.assert_close(param.grad, theirs_grad, rtol=1e-4, atol=1e-6, msg=peft_name)


@pytest.mark.parametrize("axis", ["output", "input"])
@pytest.mark.parametrize("kind", ["loha", "lokr", "locon_tucker"])
def test_merge_is_lycoris_weight_and_unmerges(kind, axis):
    net, lyco, names = _pair(kind, axis, "conv")
    ours = net.conv
    _copy_random(ours, lyco, names, seed=9)
    ours.eval()
    x = torch.randn(2, 32, 6, 6)
    before, base = ours(x), ours.base_layer.weight.detach().clone()
    with torch.no_grad():
        if kind == "locon_tucker":
            diff = lyco.make_weight().view(lyco.shape) * lyco.scale
        else:
            diff = lyco.get_weight(lyco.shape)
        expected = lyco.apply_weight_decompose(lyco._current_weight() + diff, 1)
    ours.merge()
    torch.testing.assert_close(ours.base_layer.weight, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)
    ours.unmerge()
    torch.testing.assert_close(ours.base_layer.weight, base, rtol=0, atol=1e-6)


def test_module_dropout_skips_the_whole_update():
    fields, *_ = KINDS["loha"]
    net = Net()
    add_lora(net, AdapterPlan(**{**attrs_dict(_plan(fields, "output")), "module_dropout": 1.0}), ("lin",), 3)
    net.train()
    x = torch.randn(3, 64)
    scale = dora_scale_of(net.lin, "default")
    with torch.no_grad():
        scale.mul_(2.0)  # the update is visible when it runs
    torch.testing.assert_close(net.lin(x), net.lin.base_layer(x))
    net.eval()
    assert not torch.allclose(net.lin(x), net.lin.base_layer(x), atol=1e-3)


def attrs_dict(plan: AdapterPlan) -> dict:
    import attrs

    return attrs.asdict(plan, recurse=False)
