"""optimizer.kind = "came" (issue 12): came_pytorch's CAME, as kohya builds `came_pytorch.CAME(params,
lr=learning_rate, **optimizer_args)`. Through the real optimizer and loop on a tiny SD1 model: each step
equals a CAME built by hand on the same parameters and gradients, its state (a Python int `step`, the tensor
`RMS`, the factored statistics) survives dbspec's checkpoint, and an interrupted run resumes bit-exact."""

from __future__ import annotations


import torch
from came_pytorch import CAME

from dbspec.runtime.checkpoints import latest_checkpoint, load_state
from dbspec.runtime.execute import execute
from dbspec.runtime.optim import make_optimizer, param_groups
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

CAME_SPEC = [
    'optimizer.kind="came"',
    "optimizer.lr=1e-3",
    "optimizer.betas=[0.8, 0.99, 0.999]",
    "optimizer.came_eps=[1e-29, 1e-15]",
    "optimizer.clip_threshold=0.5",
    "optimizer.weight_decay=0.02",
]


def _params() -> list[torch.nn.Parameter]:
    """A matrix and a 3x3 convolution (factored statistics), a bias (CAME's full exp_avg_sq)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),
        torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g)),
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


def test_came_steps_as_the_came_kohya_builds(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2), CAME_SPEC)
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("came", (0.8, 0.99, 0.999), 0.02)
    assert (o.came.clip_threshold, o.came.eps) == (0.5, (1e-29, 1e-15))
    assert "CAME: betas 0.8, 0.99, 0.999, clip_threshold 0.5, eps (1e-29, 1e-15), weight decay 0.02" in (
        summary_text(plan)
    )
    ours, theirs, plain = _params(), _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is CAME
    # kohya: came_pytorch.CAME(params, lr=learning_rate, **optimizer_args)
    reference = CAME(
        theirs, lr=1e-3, betas=(0.8, 0.99, 0.999), eps=(1e-29, 1e-15), clip_threshold=0.5, weight_decay=0.02
    )
    default = CAME(plain, lr=1e-3)
    step_alike([optimizer, reference, default], [ours, theirs, plain])
    assert same(ours, theirs) and not same(ours, plain)  # the arguments change the updates
    assert not same(ours, _params())  # it stepped
    state = optimizer.state[ours[1]]
    assert state["step"] == 6 and "exp_avg_res_row" in state and "exp_avg_sq" in optimizer.state[ours[2]]


def test_came_defaults_are_cames_own(tmp_path):
    """kind = "came" alone: CAME's betas and eps (its weight decay is dbspec's 1e-2, written by converters
    as CAME's 0.0)."""
    o = compile_spec(write_spec(tmp_path, steps=2), ['optimizer.kind="came"', "optimizer.lr=1e-4"]).optimizer
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    reference = CAME(theirs, lr=1e-4, weight_decay=o.weight_decay)
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs) and o.weight_decay == 1e-2


def test_came_steps_each_group_at_its_rate(tmp_path):
    """The denoiser and text-encoder groups at their own rates, as kohya's parameter groups."""
    plan = compile_spec(
        write_spec(tmp_path, steps=2),
        [*CAME_SPEC, "optimizer.text_encoder_lr=2e-4", "train.text_encoder=true"],
    )
    o = plan.optimizer
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours[:2], [ours[2:]], o), o)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 2e-4]
    kwargs = {"betas": (0.8, 0.99, 0.999), "eps": (1e-29, 1e-15), "clip_threshold": 0.5, "weight_decay": 0.02}
    reference = CAME(
        [{"params": theirs[:2], "lr": 1e-3}, {"params": theirs[2:], "lr": 2e-4}], lr=1e-3, **kwargs
    )
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs)


def test_a_came_run_resumes_bit_exact_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    whole = execute(compile_spec(spec, [*CAME_SPEC, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*CAME_SPEC, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    # CAME's state as the checkpoint holds it (loaded with weights_only=True): an int step, a tensor RMS
    saved = load_state(latest_checkpoint(tmp_path / "parts"))["optimizer"]
    states = list(saved["state"].values())
    assert states and all(type(s["step"]) is int and s["step"] == 2 for s in states)
    assert all(isinstance(s["RMS"], torch.Tensor) and s["RMS"] > 0 for s in states)
    assert any("exp_avg_res_row" in s for s in states) and any("exp_avg_sq" in s for s in states)
    assert saved["param_groups"][0]["betas"] == (0.8, 0.99, 0.999)
    assert saved["param_groups"][0]["eps"] == (1e-29, 1e-15)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = final_weights(execute(compile_spec(spec, ["output.dir=base", "optimizer.lr=1e-12"])).final)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained


def test_a_bf16_weights_came_run_keeps_fp32_state_and_resumes_bit_exact(tmp_path):
    """precision.weights = "bf16" (kohya's full_bf16): CAME's update of a parameter reads no other, so the
    stochastic-rounding step runs it one fp32 tensor at a time; its state stays fp32."""
    extra = '[precision]\nmixed = "bf16"\nweights = "bf16"\n\n[checkpoints]\nevery = 2\n'
    spec = write_spec(tmp_path, steps=4, extra=extra)
    plan = compile_spec(spec, [*CAME_SPEC, "output.dir=parts"])
    assert plan.precision.stochastic_rounding and plan.optimizer.kind == "came"
    whole = execute(compile_spec(spec, [*CAME_SPEC, "output.dir=whole"]))
    assert whole.status == "finished"
    state = load_state(latest_checkpoint(tmp_path / "whole"))
    states = list(state["optimizer"]["state"].values())
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)
    assert all(type(s["step"]) is int for s in states)
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a = load_state(latest_checkpoint(tmp_path / "whole"))["trainable"]
    b = load_state(latest_checkpoint(tmp_path / "parts"))["trainable"]
    assert _flat(a).keys() == _flat(b).keys() and all(torch.equal(_flat(a)[k], _flat(b)[k]) for k in _flat(a))
    held = [t for t in _flat(a).values() if t.is_floating_point()]
    assert held and all(t.dtype == torch.bfloat16 for t in held)


def _flat(tree, prefix: str = "") -> dict:
    if torch.is_tensor(tree):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    return {}
