"""Optimizer constructor flags from the plan (issue 12): torch RAdam's decoupled_weight_decay and
bitsandbytes' min_8bit_size reach the optimizer the runtime builds, which steps as the class kohya's
get_optimizer builds (`cls(params, lr=learning_rate, **optimizer_args)`) bit for bit on the CPU; and the
bitsandbytes 0.50 equivalences the kohya converter relies on (PagedAdamW(optim_bits=8) and
AdamW8bit(is_paged=True) are PagedAdamW8bit, PagedAdamW32bit(optim_bits=8) is PagedAdamW), checked by stepping
the classes."""

from __future__ import annotations

import inspect

import pytest
import torch

from dbspec.plan.model import BNB_MIN_8BIT_SIZE

from dbspec.runtime.optim import make_optimizer, param_groups
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, write_spec


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),  # 5120 elements
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_spec(tmp_path_factory.mktemp("flags"), steps=2)


def test_radam_decoupled_weight_decay_reaches_torch_radam(spec):
    plan = compile_spec(
        spec,
        [
            'optimizer.kind="radam"',
            "optimizer.lr=1e-2",
            "optimizer.weight_decay=0.1",
            "optimizer.decoupled_weight_decay=true",
        ],
    )
    o = plan.optimizer
    ours, theirs, coupled = _params(), _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert (
        type(optimizer) is torch.optim.RAdam and optimizer.param_groups[0]["decoupled_weight_decay"] is True
    )
    reference = torch.optim.RAdam(theirs, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    plain = torch.optim.RAdam(coupled, lr=1e-2, weight_decay=0.1)
    step_alike([optimizer, reference, plain], [ours, theirs, coupled])
    assert same(ours, theirs) and not same(ours, coupled)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("adamw8bit", "AdamW8bit"),
        ("paged_adamw8bit", "PagedAdamW8bit"),
        ("lion8bit", "Lion8bit"),
        ("paged_lion8bit", "PagedLion8bit"),
        ("ademamix8bit", "AdEMAMix8bit"),
    ],
)
def test_min_8bit_size_reaches_the_bitsandbytes_class(spec, kind, cls):
    """8192 keeps the 5120-element tensor's state in 32 bits (the default 4096 would make it 8-bit)."""
    bnb = pytest.importorskip("bitsandbytes")
    plan = compile_spec(
        spec, [f'optimizer.kind="{kind}"', "optimizer.lr=1e-3", "optimizer.min_8bit_size=8192"]
    )
    o = plan.optimizer
    assert o.min_8bit_size == 8192
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is getattr(bnb.optim, cls) and optimizer.args.min_8bit_size == 8192
    extra = {"eps": o.eps} if "lion" not in kind else {}
    extra |= {"alpha": o.ademamix.alpha} if o.ademamix else {}
    reference = getattr(bnb.optim, cls)(
        theirs, lr=1e-3, betas=tuple(o.betas), weight_decay=o.weight_decay, min_8bit_size=8192, **extra
    )
    step_alike([optimizer, reference], [ours, theirs], n=3)
    assert same(ours, theirs) and not same(ours, _params())
    assert optimizer.state[ours[0]]["state1"].dtype == torch.float32
    default = inspect.signature(getattr(bnb.optim, cls)).parameters["min_8bit_size"].default
    assert default == BNB_MIN_8BIT_SIZE  # the plan's default is bitsandbytes' own


def test_the_bitsandbytes_adamw_variants_the_converter_maps_step_alike():
    bnb = pytest.importorskip("bitsandbytes")
    built = {
        "PagedAdamW8bit": bnb.optim.PagedAdamW8bit,
        "PagedAdamW(optim_bits=8)": lambda p, **k: bnb.optim.PagedAdamW(p, optim_bits=8, **k),
        "AdamW8bit(is_paged=True)": lambda p, **k: bnb.optim.AdamW8bit(p, is_paged=True, **k),
        "PagedAdamW": bnb.optim.PagedAdamW,
        "PagedAdamW32bit(optim_bits=8)": lambda p, **k: bnb.optim.PagedAdamW32bit(p, optim_bits=8, **k),
    }
    params = {name: _params() for name in built}
    optimizers = {name: make(params[name], lr=1e-3) for name, make in built.items()}
    step_alike(list(optimizers.values()), list(params.values()), n=3)
    eight = params["PagedAdamW8bit"]
    assert optimizers["PagedAdamW8bit"].state[eight[0]]["state1"].dtype == torch.uint8
    assert same(params["PagedAdamW(optim_bits=8)"], eight) and same(params["AdamW8bit(is_paged=True)"], eight)
    assert optimizers["AdamW8bit(is_paged=True)"].is_paged and optimizers["PagedAdamW(optim_bits=8)"].is_paged
    assert same(params["PagedAdamW32bit(optim_bits=8)"], params["PagedAdamW"])
    assert not same(params["PagedAdamW"], eight)


def test_lion_decoupled_decay_is_the_quotient_the_converter_writes(spec):
    """kohya's Lion with decoupled_weight_decay=True and learning_rate 3e-5 (lion_pytorch divides the decay
    by the constructor's lr each step) steps as dbspec's Lion at weight_decay 1.0 / 3e-5, the converter's
    value, with the text-encoder group at another rate."""
    lion_pytorch = pytest.importorskip("lion_pytorch")
    o = compile_spec(
        spec,
        [
            'optimizer.kind="lion"',
            "optimizer.lr=3e-5",
            "optimizer.betas=[0.9, 0.99]",  # lion_pytorch's defaults, which the converter writes
            f"optimizer.weight_decay={1.0 / 3e-5!r}",
        ],
    ).optimizer
    ours, theirs = _params(), _params()
    optimizer = make_optimizer([{"params": ours[:1], "lr": 3e-5}, {"params": ours[1:], "lr": 1e-5}], o)
    groups = [{"params": theirs[:1], "lr": 3e-5}, {"params": theirs[1:], "lr": 1e-5}]
    reference = lion_pytorch.Lion(groups, lr=3e-5, weight_decay=1.0, decoupled_weight_decay=True)
    step_alike([optimizer, reference], [ours, theirs], n=3)
    assert same(ours, theirs) and not same(ours, _params())
