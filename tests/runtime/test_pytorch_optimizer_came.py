"""optimizer.kind = "pytorch_optimizer_came" (issue 12): the pytorch_optimizer package's CAME, as kohya builds
`pytorch_optimizer.CAME(params, lr=learning_rate, **optimizer_args)`. Each step equals a CAME built by hand
on the same parameters and gradients (not came_pytorch's: the floats differ), `foreach` does not change the
update, its state is what the memory estimate counts and survives dbspec's checkpoint, and an interrupted
tiny run resumes bit-exact."""

from __future__ import annotations

import came_pytorch
import pytest
import torch
from pytorch_optimizer import CAME

from dbspec.compiler.memory import OPTIMIZER_STATE_BYTES
from dbspec.runtime.checkpoints import latest_checkpoint, load_state
from dbspec.runtime.execute import execute
from dbspec.runtime.optim import make_optimizer, param_groups
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

SPEC = [
    'optimizer.kind="pytorch_optimizer_came"',
    "optimizer.lr=1e-3",
    "optimizer.betas=[0.8, 0.99, 0.999]",
    "optimizer.came_eps=[1e-29, 1e-15]",
    "optimizer.clip_threshold=0.5",
    "optimizer.weight_decay=0.02",
]
KWARGS = {
    "betas": (0.8, 0.99, 0.999),
    "eps1": 1e-29,
    "eps2": 1e-15,
    "clip_threshold": 0.5,
    "weight_decay": 0.02,
}


def _params() -> list[torch.nn.Parameter]:
    """A matrix and a 3x3 convolution (factored statistics), a bias (a full exp_avg_sq)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),
        torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g)),
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


def test_it_steps_as_the_came_kohya_builds_at_each_groups_rate(tmp_path):
    plan = compile_spec(
        write_spec(tmp_path, steps=2), [*SPEC, "optimizer.text_encoder_lr=2e-4", "train.text_encoder=true"]
    )
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("pytorch_optimizer_came", (0.8, 0.99, 0.999), 0.02)
    assert (o.came.clip_threshold, o.came.eps) == (0.5, (1e-29, 1e-15))
    assert "pytorch_optimizer's CAME: betas 0.8, 0.99, 0.999, clip_threshold 0.5" in summary_text(plan)
    ours, theirs, loop, other = _params(), _params(), _params(), _params()
    optimizer = make_optimizer(param_groups(ours[:2], [ours[2:]], o), o)
    assert type(optimizer) is CAME and [g["lr"] for g in optimizer.param_groups] == [1e-3, 2e-4]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "lr": 2e-4}]

    # kohya: pytorch_optimizer.CAME(params, lr=learning_rate, **optimizer_args); foreach=False is its loop
    reference = CAME(groups(theirs), lr=1e-3, **KWARGS)
    per_tensor = CAME(groups(loop), lr=1e-3, foreach=False, **KWARGS)
    kwargs = {k: v for k, v in KWARGS.items() if k not in ("eps1", "eps2")}
    came = came_pytorch.CAME(groups(other), lr=1e-3, eps=(1e-29, 1e-15), **kwargs)
    step_alike([optimizer, reference, per_tensor, came], [ours, theirs, loop, other])
    assert same(ours, theirs) and same(ours, loop)
    assert not same(ours, other)  # came_pytorch's arithmetic differs: a kind of its own
    assert torch.allclose(ours[0], other[0], atol=1e-5)  # ... for the same algorithm
    assert not same(ours, _params())  # it stepped
    assert optimizer.param_groups[0]["step"] == 6
    # the state the memory estimate counts: exp_avg (4 bytes) and the factored statistics (small here)
    state = [optimizer.state[p] for p in ours]
    tensors = sum(t.numel() * t.element_size() for s in state for t in s.values() if torch.is_tensor(t))
    assert tensors <= OPTIMIZER_STATE_BYTES["pytorch_optimizer_came"] * sum(p.numel() for p in ours)
    assert "exp_avg_res_row" in state[0] and "exp_avg_sq" in state[2]


def test_a_run_resumes_bit_exact_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    whole = execute(compile_spec(spec, [*SPEC, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*SPEC, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    # its state as the checkpoint holds it (loaded with weights_only=True): the group's int step, tensors
    saved = load_state(latest_checkpoint(tmp_path / "parts"))["optimizer"]
    states = list(saved["state"].values())
    assert states and all(isinstance(s["RMS"], torch.Tensor) and s["RMS"] > 0 for s in states)
    assert any("exp_avg_res_row" in s for s in states) and any("exp_avg_sq" in s for s in states)
    group = saved["param_groups"][0]
    assert (type(group["step"]), group["step"], group["eps1"], group["eps2"]) == (int, 2, 1e-29, 1e-15)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = final_weights(execute(compile_spec(spec, ["output.dir=base", "optimizer.lr=1e-12"])).final)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained


def test_fp16_weights_break_it_as_dbs249_says():
    """fp16 parameters get fp16 statistics, where eps1 (1e-30) and small squared gradients are 0: the weights
    turn non-finite (came_pytorch keeps fp32 state and stays finite)."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(32, 16, generator=g).half())]
    optimizer = CAME(ps, lr=1e-3)
    for _ in range(5):
        ps[0].grad = (torch.randn(ps[0].shape, generator=g) * 1e-3).half()
        optimizer.step()
    assert optimizer.state[ps[0]]["exp_avg"].dtype == torch.float16
    assert not torch.isfinite(ps[0]).all()


@pytest.mark.parametrize("bad", [{"weight_decay": -0.1}, {"betas": (0.9, 1.0, 0.9)}, {"eps1": -1e-30}])
def test_its_constructor_refuses_what_the_converter_calls_invalid(bad):
    """tests/unit/test_convert_kohya_pytorch_optimizer_came.py's DBS402 cases raise in the real class."""
    with pytest.raises(ValueError):
        CAME(_params(), **{"lr": 1e-3, **bad})
