"""LyCORIS LoCon's rank and module dropout (adapter.rank_dropout_form "lycoris" / "lycoris_bypass",
runtime/lora_dropout.py) against lycoris-lora 4.1.3's LoConModule built with them, what kohya's lycoris.kohya
network trains with `algo=lora`/`locon`: on fixed tensors, in training mode with torch's global generator
reseeded before each forward (both draw from it, in LoConModule's order: module dropout, then the mask), the
same output (the same rows or ranks dropped, the same values up to rounding) and gradients; then a tiny SD
model trains with them and resumes bit-exact (the draws come from the checkpointed generator)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout

modules = pytest.importorskip("lycoris.modules")
LoConModule = modules.LoConModule

RANK, ALPHA = 3, 1.5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 24)
        self.conv = nn.Conv2d(16, 12, 3, padding=1, stride=2)


def _inputs(generator):
    return {
        "proj": torch.randn(2, 5, 40, generator=generator),  # tokens: the masks broadcast over them
        "conv": torch.randn(2, 16, 7, 6, generator=generator),
    }


CASES = [
    ("lycoris", {"rank_dropout": 0.4}),
    ("lycoris", {"rank_dropout": 0.3, "module_dropout": 0.4}),
    ("lycoris", {"rank_dropout": 0.3, "tucker": True}),
    ("lycoris", {"rank_dropout": 0.5, "scalar": True}),
    ("lycoris_bypass", {"rank_dropout": 0.4}),
    ("lycoris_bypass", {"rank_dropout": 0.3, "module_dropout": 0.4, "tucker": True}),
    ("lycoris_bypass", {"rank_dropout": 0.3, "output_dropout": 0.25, "scalar": True}),  # its `dropout`
    ("lycoris_bypass", {"rank_dropout": 0.0, "output_dropout": 0.3, "module_dropout": 0.3, "tucker": True}),
]


def _adapted(form: str, switches: dict) -> tuple[Net, Net]:
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="lora",
        rank=RANK,
        alpha=ALPHA,
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        rank_dropout=switches["rank_dropout"],
        module_dropout=switches.get("module_dropout", 0.0),
        rank_dropout_form=form,
        tucker=switches.get("tucker", False),
        scalar=switches.get("scalar", False),
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    add_lora_dropout(
        net,
        adapter.rank_dropout,
        adapter.module_dropout,
        form=form,
        output_dropout=switches.get("output_dropout", 0),
    )
    return net, base


def _params(layer, lyco, scalar: bool):
    """(ours, theirs) pairs of the trained tensors."""
    pairs = [
        (layer.lora_A["default"].weight, lyco.lora_down.weight),
        (layer.lora_B["default"].weight, lyco.lora_up.weight),
    ]
    if hasattr(layer, "lora_mid") and "default" in layer.lora_mid:
        pairs.append((layer.lora_mid["default"].weight, lyco.lora_mid.weight))
    if scalar:
        from dbspec.runtime.lycoris_switches import layer_scalar

        pairs.append((layer_scalar(layer), lyco.scalar))
    return pairs


@pytest.mark.parametrize(
    "form, switches",
    CASES,
    ids=lambda c: c if isinstance(c, str) else "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_locon_dropouts_equal_lycoris_locon_module(form, switches):
    net, base = _adapted(form, switches)
    net.train()
    generator = torch.Generator().manual_seed(2)
    x = _inputs(generator)
    scalar = switches.get("scalar", False)
    for name in x:
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        lyco = LoConModule(
            name,
            reference,
            1.0,
            lora_dim=RANK,
            alpha=ALPHA,
            dropout=switches.get("output_dropout", 0.0),
            rank_dropout=switches["rank_dropout"],
            module_dropout=switches.get("module_dropout", 0.0),
            use_tucker=switches.get("tucker", False),
            use_scalar=scalar,
            bypass_mode=form == "lycoris_bypass",
        )
        with torch.no_grad():
            for ours, theirs in _params(layer, lyco, scalar):
                value = torch.randn(ours.shape, generator=generator) * 0.3 + (0.7 if ours.dim() == 0 else 0)
                ours.copy_(value)
                theirs.copy_(value)
        lyco.apply_to()
        lyco.train()
        outputs, skipped = [], 0
        for seed in range(8):  # several draws: module dropout both ways, different masks
            torch.manual_seed(seed)
            out = layer(x[name])
            torch.manual_seed(seed)
            ref = reference(x[name])
            plain = layer.base_layer(x[name])
            # the same rows / channels changed by the update: the same mask drawn
            assert torch.equal((out - plain).abs() > 1e-7, (ref - plain).abs() > 1e-7), seed
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
            outputs.append(out)
            if not out.requires_grad:  # module dropout: the base layer alone, LyCORIS's too
                skipped += 1
                continue
            weights = torch.randn(out.shape, generator=generator)
            (out * weights).sum().backward()
            (ref * weights).sum().backward()
            for ours, theirs in _params(layer, lyco, scalar):
                torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)
                ours.grad, theirs.grad = None, None
        assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # the draws act
        if switches.get("module_dropout"):
            assert 0 < skipped < len(outputs)
        layer.eval(), lyco.eval()  # no dropout outside training
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), reference(x[name]), rtol=1e-5, atol=1e-6)


def test_lycoris_form_drops_whole_output_rows_unscaled():
    """LoConModule.make_weight: a row of ΔW is dropped for every token and sample; the kept rows carry the
    full update (no 1 / (1 - p) rescale, kohya never passes rank_dropout_scale)."""
    net, _ = _adapted("lycoris", {"rank_dropout": 0.5})
    layer = net.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(4, 6, 40)
    layer.eval()
    with torch.no_grad():
        full = layer(x) - layer.base_layer(x)
    layer.train()
    torch.manual_seed(5)
    with torch.no_grad():
        dropped = layer(x) - layer.base_layer(x)
    torch.manual_seed(5)
    keep = torch.rand(24) > 0.5
    assert 0 < int(keep.sum()) < 24
    torch.testing.assert_close(dropped, full * keep, rtol=1e-5, atol=1e-6)


def test_tiny_run_resumes_bit_exact(tmp_path):
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, write_spec
    from tests.runtime.test_lycoris import _files

    table = (
        '[adapter]\nkind = "lora"\nrank = 2\nalpha = 1.0\nconv_rank = 2\nconv_alpha = 1.0\n'
        'rank_dropout = 0.3\nrank_dropout_form = "{form}"\nmodule_dropout = 0.2\n'
        "[train]\ntext_encoder = true\n[checkpoints]\nevery = 2\n"
    )
    finals = {}
    for form in ("kohya", "lycoris", "lycoris_bypass"):
        extra = table.format(form=form)
        if form == "lycoris_bypass":  # with LoConModule's bypass `dropout` (kohya's --network_dropout)
            extra = extra.replace("module_dropout = 0.2\n", "module_dropout = 0.2\noutput_dropout = 0.2\n")
        spec = write_spec(tmp_path / form, steps=4, extra=extra)
        lr = ["optimizer.lr=1e-2"]
        plan = compile_spec(spec, [*lr, "output.dir=whole"])
        assert plan.adapter.rank_dropout_form == form
        assert plan.adapter.output_dropout == (0.2 if form == "lycoris_bypass" else 0.0)
        whole = execute(plan)
        finals[form] = _files(Path(whole.final))
        if form == "kohya":  # the reference the LyCORIS forms must differ from (their own masks drawn)
            continue
        plan = compile_spec(spec, [*lr, "output.dir=parts"])
        assert execute(plan, stop_after=2).status == "interrupted"
        second = execute(plan, resume=True)
        assert second.status == "finished" and second.steps == 4
        ours, resumed = _files(Path(whole.final)), _files(Path(second.final))
        assert ours.keys() == resumed.keys()
        for name, tensors in ours.items():
            assert tensors.keys() == resumed[name].keys()
            assert all(torch.equal(tensors[k], resumed[name][k]) for k in tensors), name
    for form in ("lycoris", "lycoris_bypass"):
        name = next(n for n in finals[form] if "kohya" not in n)
        theirs = finals["kohya"][name]
        assert any(not torch.equal(t, theirs[k]) for k, t in finals[form][name].items()), form


def test_export_names_lycoris_locon():
    """The export's ss_network_args: LoCon's rank dropout is LyCORIS's (algo=locon), bypass_mode with it."""
    from dbspec.runtime.lycoris_export import network_args

    plan = AdapterPlan(kind="lora", rank=2, alpha=1.0, rank_dropout=0.1, rank_dropout_form="lycoris_bypass")
    assert network_args(plan) == {"algo": "locon", "bypass_mode": "True"}
    assert network_args(AdapterPlan(kind="lora", rank=2, alpha=1.0, rank_dropout=0.1)) == {}
