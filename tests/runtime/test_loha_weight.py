"""LoHa and LoKr layers (peft's, with runtime/loha_weight.py on LoHa) against LyCORIS's own modules
(lycoris-lora's LohaModule / LokrModule, what kohya's lycoris.kohya network trains): on the same fixed
float64 factors the same forward and the same gradient for every factor, the Tucker form included (peft
0.21's HadaWeightCP backward gets hada_w1_a / hada_w2_a wrong), and rank dropout by LyCORIS's rule with and
without `rank_dropout_scale` (the same generator state draws the same mask and gives the same output)."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.loha_weight import LycorisLoha

modules = pytest.importorskip("lycoris.modules")

RANK, ALPHA = 2, 1.5
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
# name -> (AdapterPlan fields, LyCORIS class, its arguments, factor names)
KINDS = {
    "loha": ({"kind": "loha"}, "LohaModule", {}, LOHA),
    "loha_tucker": ({"kind": "loha", "tucker": True}, "LohaModule", {"use_tucker": True}, LOHA),
    "lokr": ({"kind": "lokr"}, "LokrModule", {"factor": -1}, LOKR),
    "lokr_tucker": ({"kind": "lokr", "tucker": True}, "LokrModule", {"factor": -1, "use_tucker": True}, LOKR),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 48)
        self.conv = nn.Conv2d(32, 24, 3, padding=1)


def _pair(
    kind: str, layer: str, rank_dropout: float = 0.0, scale: bool | str = False, module_dropout: float = 0.0
):
    """(our adapted layer, LyCORIS's module on a copy of the same base layer, the factor names), float64,
    with the same random non-zero factors in both. `scale` "block": the rescale is the layer's block's own
    (a LyCORIS map entry's rank_dropout_scale), the adapter's off."""
    fields, cls, extra, names = KINDS[kind]
    net = Net().double()
    base = copy.deepcopy(getattr(net, layer))
    if scale == "block":
        block = BlockPlan(pattern=layer, rank=RANK, alpha=ALPHA, conv_rank=RANK, conv_alpha=ALPHA)
        fields = {**fields, "blocks": (attrs.evolve(block, rank_dropout_scale="on"),)}
    plan = AdapterPlan(
        rank=RANK,
        alpha=ALPHA,
        denoiser_targets=("lin",),
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        rank_dropout=rank_dropout,
        rank_dropout_scale=scale is True,
        module_dropout=module_dropout,
        lokr_unit_scale=fields["kind"] == "lokr",
        **fields,
    )
    add_lora(net, plan, ("lin",), seed=3, conv=True)
    # our LoHa and LoKr layers draw the module-dropout number only with module_dropout, as LyCORIS
    # (runtime/peft_draw.py; peft's own draw it in every training forward)
    lyco = getattr(modules, cls)(
        f"lora_unet_{layer}",
        base,
        1.0,
        RANK,
        ALPHA,
        rank_dropout=rank_dropout,
        module_dropout=module_dropout,
        rank_dropout_scale=bool(scale),
        **extra,
    ).double()
    ours = getattr(net, layer)
    g = torch.Generator().manual_seed(11)
    theirs = dict(lyco.named_parameters())
    copied = []
    with torch.no_grad():
        for name in names:
            table = getattr(ours, name, None)
            if table is None or "default" not in table:
                continue
            value = torch.randn(table["default"].shape, generator=g, dtype=torch.float64) * 0.5
            table["default"].copy_(value)
            theirs[name].copy_(value)
            copied.append(name)
    assert set(copied) == set(names) & set(theirs)  # the same factors on both sides
    lyco.apply_to()
    return ours, lyco, copied


def _input(layer: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    shape = (3, 64) if layer == "lin" else (2, 32, 6, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _backward(out: torch.Tensor) -> None:
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()


@pytest.mark.parametrize("layer", ["lin", "conv"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_and_every_gradient_equal_lycoris_module(kind, layer):
    ours, lyco, names = _pair(kind, layer)
    assert isinstance(ours, LycorisLoha) == kind.startswith("loha")
    if "tucker" in kind:
        assert ("hada_t1" in names or "lokr_t2" in names) == (layer == "conv")
    x = _input(layer)
    ours.eval(), lyco.eval()
    out, ref = ours(x), lyco.org_module[0](x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, ours.base_layer(x), atol=1e-3)  # the update acts
    _backward(out)
    _backward(ref)
    theirs = dict(lyco.named_parameters())
    for name in names:
        grad = getattr(ours, name)["default"].grad
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, theirs[name].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_peft_tucker_backward_is_what_the_fix_replaces():
    """peft 0.21's own HadaWeightCP against the same product differentiated by autograd: w1_a and w2_a
    differ (the reason for runtime/loha_weight.py; if peft fixes it, this fails and the override can go)."""
    from peft.tuners.loha.layer import HadaWeightCP

    g = torch.Generator().manual_seed(0)
    shapes = [(2, 2, 3, 3), (2, 5), (2, 4), (2, 2, 3, 3), (2, 5), (2, 4)]
    values = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    probe = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    peft_args = [v.clone().requires_grad_() for v in values]
    (HadaWeightCP.apply(*peft_args, torch.tensor(1.0)) * probe).sum().backward()
    t1, w1a, w1b, t2, w2a, w2b = autograd_args = [v.clone().requires_grad_() for v in values]
    product = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a)
    product = product * torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
    (product * probe).sum().backward()
    wrong = [
        name
        for name, a, b in zip(
            ("hada_t1", "hada_w1_a", "hada_w1_b", "hada_t2", "hada_w2_a", "hada_w2_b"),
            peft_args,
            autograd_args,
        )
        if not torch.allclose(a.grad, b.grad)
    ]
    assert sorted(wrong) == ["hada_w1_a", "hada_w2_a"]


@pytest.mark.parametrize("scale", [False, True, "block"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_rank_dropout_follows_lycoris_with_and_without_rescale(kind, scale):
    """Training mode, rank dropout 0.5: from the same generator state both draw the same rows and give the
    same output and gradients; the kept rows are rescaled only with rank_dropout_scale, the adapter's or
    the layer's block's own (a LyCORIS map entry's, `block`)."""
    layer = "conv"
    ours, lyco, names = _pair(kind, layer, rank_dropout=0.5, scale=scale)
    x = _input(layer)
    ours.train(), lyco.train()
    # peft's LoKr builds its mask in float32 (LyCORIS in the weight's dtype): 1 / kept share rounds to float32
    # there, exact for float32 adapter weights (dbspec's default), within float32's precision in float64
    exact = {"rtol": 1e-12, "atol": 1e-12}
    close = {"rtol": 1e-6, "atol": 1e-5} if kind.startswith("lokr") and scale else exact
    for seed in range(3):
        torch.manual_seed(seed)
        out = ours(x)
        torch.manual_seed(seed)
        ref = lyco.org_module[0](x)
        torch.testing.assert_close(out, ref, **close)
        _backward(out)
        _backward(ref)
    theirs = dict(lyco.named_parameters())
    for name in names:
        torch.testing.assert_close(getattr(ours, name)["default"].grad, theirs[name].grad, **close, msg=name)
    # the rule itself: the rows of ΔW the mask keeps, times 1 / kept share only with the rescale
    torch.manual_seed(0)
    full = ours.get_delta_weight("default")
    torch.manual_seed(0)
    kept = torch.rand(full.shape[0]) > 0.5
    torch.manual_seed(0)
    dropped = ours.get_delta_weight("default", apply_rank_dropout=True)
    assert 0 < kept.sum() < kept.numel()
    factor = kept.numel() / kept.sum() if scale else 1.0
    torch.testing.assert_close(dropped[kept], full[kept] * factor)
    assert torch.all(dropped[~kept] == 0)


@pytest.mark.parametrize("dora", [False, True])
def test_converted_layers_pickle_by_reference(dora):
    """A converted LoHa layer (and LyCORIS's weight decomposition on top of it) survives pickling: its
    classes are module-level names found again in a process that has not made them yet."""
    import pickle

    import dbspec.runtime.loha_weight as loha_module
    import dbspec.runtime.lycoris_dora as dora_module

    net = Net()
    plan = AdapterPlan(
        kind="loha",
        rank=RANK,
        alpha=ALPHA,
        denoiser_targets=("lin",),
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        tucker=True,
        dora=dora,
        dora_form="lycoris" if dora else "peft",
    )
    add_lora(net, plan, ("lin",), seed=3, conv=True)
    name = type(net.conv).__name__
    assert name == ("LycorisDora_hada_LycorisLoha_Conv2d" if dora else "LycorisLoha_Conv2d")
    with torch.no_grad():
        net.conv.hada_w2_a["default"].normal_()  # LyCORIS starts w2_a at zero: give the update a value
    data = pickle.dumps(net)
    for made in (loha_module, dora_module):  # as in a fresh process
        for cls in list(made._CLASSES.values()):
            del made.__dict__[cls.__name__]
        made._CLASSES.clear()
    back = pickle.loads(data)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(back.conv(x), net.conv(x), rtol=0, atol=0)
    assert type(back.conv).__name__ == name and isinstance(back.conv, LycorisLoha)


# --- the generator: LyCORIS draws the module-dropout number only with a rate (runtime/peft_draw.py) ---


@pytest.mark.parametrize("module_dropout", [0.0, 0.5])
@pytest.mark.parametrize("kind", list(KINDS))
def test_training_forwards_draw_what_lycoris_draws(kind, module_dropout):
    """From the same generator state, training forwards (rank dropout 0.3 too) give LyCORIS's outputs and
    leave the generator where LyCORIS's module leaves it: no draw for the module dropout without a rate
    (peft's layers draw one in every forward), one per forward with it."""
    for layer in ("lin", "conv"):
        ours, lyco, _ = _pair(kind, layer, rank_dropout=0.3, module_dropout=module_dropout)
        x = _input(layer)
        ours.train(), lyco.train()
        skipped = 0
        for seed in range(4):
            torch.manual_seed(seed)
            out = ours(x)
            state = torch.get_rng_state()
            torch.manual_seed(seed)
            ref = lyco.org_module[0](x)
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            assert torch.equal(state, torch.get_rng_state()), (layer, seed)
            skipped += torch.equal(out, ours.base_layer(x))
        assert (skipped > 0) == (module_dropout > 0) and skipped < 4  # the skip is drawn, when it is


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(16, 16) for _ in range(3))


class _Fused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.transformer_blocks = nn.ModuleList([_Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.transformer_blocks[0]
        return torch.cat([block.to_q(x), block.to_k(x), block.to_v(x)], dim=-1)


def _nonzero(layer: nn.Module) -> None:
    """LyCORIS starts a LoKr's second factor at zero: give the update a value."""
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.startswith("lokr_w2"):
                param.normal_()


def _no_draw(module: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> None:
    """Every layer draws as LokrModule; a training forward of `module` leaves the generator as it was and
    gives the evaluation forward's output (no dropout set)."""
    from dbspec.runtime.peft_draw import LycorisLokr

    assert layers and all(isinstance(layer, LycorisLokr) for layer in layers)
    module.eval()
    expected = module(x)
    module.train()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())


def test_fused_mixed_and_loaded_lokr_layers_draw_nothing_without_module_dropout(tmp_path):
    """The other paths building peft LoKr layers: a fused Linear's parts (Flux / SD3), a LoHa adapter's LoKr
    block (mixed kinds), and a run's folder loaded back (dbspec sample) draw no module-dropout number."""
    from peft.tuners.lokr import LoKrLayer

    from dbspec.plan.model import FusedPlan
    from dbspec.runtime.weights import load_peft_adapters, save_peft_adapters

    fused = _Fused()
    group = FusedPlan(name="qkv", blocks="transformer_blocks", parts=("to_q", "to_k", "to_v"))
    plan = AdapterPlan(
        kind="lokr", rank=RANK, alpha=ALPHA, denoiser_targets=("to_q", "to_k", "to_v"), fused=(group,)
    )
    plan = attrs.evolve(plan, lokr_factorization="lycoris", lokr_unit_scale=True)
    add_lora(fused, plan, ("to_q", "to_k", "to_v"), seed=3, conv=True)
    parts = [m for m in fused.modules() if isinstance(m, LoKrLayer)]
    assert type(parts[0]).__name__ == "LycorisLokr_FusedLokr_Linear"
    _nonzero(parts[0])
    _no_draw(fused, parts, torch.randn(3, 16))

    net = Net()
    block = BlockPlan(pattern="conv", rank=RANK, alpha=ALPHA, conv_rank=RANK, conv_alpha=ALPHA, kind="lokr")
    mixed = AdapterPlan(
        kind="loha",
        rank=RANK,
        alpha=ALPHA,
        denoiser_targets=("lin",),
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        blocks=(block,),
    )
    add_lora(net, mixed, ("lin",), seed=3, conv=True)
    assert isinstance(net.lin, LycorisLoha)
    _nonzero(net.conv)
    _no_draw(net.conv, [net.conv], torch.randn(2, 32, 6, 6))

    lokr = Net()
    add_lora(lokr, AdapterPlan(kind="lokr", rank=RANK, alpha=ALPHA, denoiser_targets=("lin",)), ("lin",), 3)
    _nonzero(lokr.lin)
    save_peft_adapters(tmp_path, {"unet": lokr}, torch.float32)
    back = Net()
    assert load_peft_adapters(tmp_path, {"unet": back}) == ["unet"]
    x = torch.randn(3, 64)
    _no_draw(back.lin, [back.lin], x)
    torch.testing.assert_close(back.lin(x), lokr.lin(x), rtol=0, atol=0)
