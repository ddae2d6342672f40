"""LoKr's Kronecker split (runtime/lokr_factor.py) against lycoris-lora's: its factorization on a grid of
dimensions and factors, including the pairs where peft's differs (a factor above the square root), and peft's
LoKr layers built by add_lora against LyCORIS's LokrModule on the same base layer: the same factor shapes
(with decompose_both and unbalanced_factorization too), the same forward and gradients on the same fixed
float64 factors. Runs saved before (plan.adapter.lokr_factorization = "peft") keep peft's shapes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lokr_factor import factorization

general = pytest.importorskip("lycoris.functional.general")
from lycoris.modules.lokr import LokrModule  # noqa: E402

DIMS = (320, 640, 768, 1024, 1280, 2048, 2560, 4096, 5120, 10240, 127, 360)
FACTORS = (-1, 1, 2, 4, 8, 16, 32, 64, 128, 3, 5, 7, 12)
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
RANK, ALPHA, FACTOR = 2, 1.5, 32  # factor 32 is above sqrt(320) and sqrt(64): peft's split differs there


def test_factorization_equals_lycoris_on_a_grid():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    differ = []
    for dim in DIMS:
        for factor in FACTORS:
            assert factorization(dim, factor) == general.factorization(dim, factor), (dim, factor)
            if peft_factorization(dim, factor) != general.factorization(dim, factor):
                differ.append((dim, factor))
    # the grid holds the pairs this module exists for (a factor above the square root that divides)
    assert (320, 32) in differ and (1280, 64) in differ and len(differ) > 10
    assert all(factor * factor > dim for dim, factor in differ)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(320, 640)
        self.conv = nn.Conv2d(64, 320, 3, padding=1)


def _plan(**fields) -> AdapterPlan:
    fields = {"rank": RANK, "alpha": ALPHA, "factor": FACTOR, "lokr_factorization": "lycoris", **fields}
    return AdapterPlan(
        kind="lokr",
        denoiser_targets=("lin",),
        conv_rank=fields["rank"],
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        lokr_unit_scale=True,
        **fields,
    )


def _pair(layer: str, **fields):
    """(our LoKr layer, LyCORIS's LokrModule on a copy of the same base layer), float64, the same random
    non-zero factors in both (their shapes must agree to copy)."""
    net = Net().double()
    base = copy.deepcopy(getattr(net, layer))
    plan = _plan(**fields)
    add_lora(net, plan, ("lin",), seed=3, conv=True)
    lyco = LokrModule(
        f"lora_unet_{layer}",
        base,
        1.0,
        plan.rank,
        ALPHA,
        factor=FACTOR,
        decompose_both=plan.decompose_both,
        unbalanced_factorization=plan.unbalanced_factorization,
    ).double()
    ours = getattr(net, layer)
    mine = {n: getattr(ours, n)["default"] for n in LOKR if "default" in getattr(ours, n)}
    theirs = {n: p for n, p in lyco.named_parameters() if n in LOKR}
    assert {n: tuple(p.shape) for n, p in mine.items()} == {n: tuple(p.shape) for n, p in theirs.items()}
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in mine.items():
            value = torch.randn(param.shape, generator=g, dtype=torch.float64) * 0.5
            param.copy_(value)
            theirs[name].copy_(value)
    lyco.apply_to()
    return ours, lyco, sorted(mine)


@pytest.mark.parametrize("layer", ["lin", "conv"])
@pytest.mark.parametrize(
    "fields",
    [{}, {"decompose_both": True}, {"unbalanced_factorization": True}, {"rank": 64}],
    ids=["plain", "decompose_both", "unbalanced", "full"],
)
def test_layer_shapes_forward_and_gradients_equal_lokr_module(layer, fields):
    ours, lyco, names = _pair(layer, **fields)
    w1 = ours.lokr_w1["default"] if "default" in ours.lokr_w1 else ours.lokr_w1_a["default"]
    out_dim = ours.get_base_layer().weight.shape[0]
    first = general.factorization(out_dim, FACTOR)
    assert w1.shape[0] == (first[1] if fields.get("unbalanced_factorization") else first[0])
    g = torch.Generator().manual_seed(5)
    shape = (3, 320) if layer == "lin" else (2, 64, 4, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    ours.eval(), lyco.eval()
    out, ref = ours(x), lyco.org_module[0](x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, ours.base_layer(x), atol=1e-3)
    for y in (out, ref):
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    theirs = dict(lyco.named_parameters())
    for name in names:
        grad = getattr(ours, name)["default"].grad
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, theirs[name].grad, rtol=1e-10, atol=1e-10, msg=name)


def test_plans_saved_before_keep_pefts_split():
    """lokr_factorization = "peft" (a run saved before): peft's shapes, the factor first; so its checkpoint
    still loads and resumes."""
    from peft.tuners.lokr.layer import factorization as peft_factorization

    net = Net()
    add_lora(net, _plan(lokr_factorization="peft"), ("lin",), seed=3, conv=True)
    assert net.lin.lokr_w1["default"].shape == (
        peft_factorization(640, FACTOR)[0],
        peft_factorization(320, FACTOR)[0],
    )
    fresh = Net()
    add_lora(fresh, _plan(), ("lin",), seed=3, conv=True)
    theirs = (general.factorization(640, FACTOR)[0], general.factorization(320, FACTOR)[0])
    assert fresh.lin.lokr_w1["default"].shape == theirs != net.lin.lokr_w1["default"].shape


@pytest.mark.parametrize(
    ("factor", "split", "resumes"),
    [
        (32, "peft", True),
        (32, "lycoris", False),
        (-1, "lycoris", True),
        (-1, "peft", True),
        (1, "lycoris", True),
    ],
)
def test_legacy_run_hash_keeps_old_lokr_runs(factor, split, resumes):
    """A run saved before the field hashes as a plan holding peft's split (the split that version trained); a
    factor of 1 or less splits the same either way, so LyCORIS's split hashes as it too; a factor above 1
    with LyCORIS's split is another run (its shapes can differ), refused."""
    import tempfile
    from pathlib import Path

    import attrs

    from dbspec.plan.io import legacy_run_hashes
    from tests.runtime.runspec import compile_spec, write_spec

    with tempfile.TemporaryDirectory() as folder:
        extra = f'[adapter]\nkind = "lokr"\nrank = 2\nfactor = {factor}\n'
        plan = compile_spec(write_spec(Path(folder), steps=2, extra=extra), [])
    assert plan.adapter.lokr_factorization == "lycoris"

    def hashes(value: str) -> tuple[str, ...]:
        return legacy_run_hashes(
            attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, lokr_factorization=value))
        )

    assert (hashes(split) == hashes("peft")) == resumes
