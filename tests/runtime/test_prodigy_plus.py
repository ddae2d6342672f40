"""optimizer.kind = "prodigy_plus_schedulefree" (issue 12): the prodigy-plus-schedule-free package's
ProdigyPlusScheduleFree, as kohya builds `prodigyplus.ProdigyPlusScheduleFree(params, lr=learning_rate,
**optimizer_args)` and switches its train()/eval() modes (a schedule-free optimizer: checkpoints, exports and
validation hold its averaged weights). Each step equals the class built by hand (each group its own d), its
state is what the memory estimate counts and survives dbspec's checkpoint, and an interrupted tiny run resumes
bit-exact."""

from __future__ import annotations

import math

import torch
from prodigyplus import ProdigyPlusScheduleFree

from dbspec.compiler.memory import OPTIMIZER_STATE_BYTES
from dbspec.runtime.checkpoints import latest_checkpoint, load_state
from dbspec.runtime.execute import execute
from dbspec.runtime.optim import averaged_weights, make_optimizer, param_groups
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

SPEC = [
    'optimizer.kind="prodigy_plus_schedulefree"',
    "optimizer.lr=1.0",
    "optimizer.betas=[0.95, 0.99]",
    "optimizer.weight_decay=0.01",
    "optimizer.d0=1e-4",
    "optimizer.d_coef=2.0",
]
KWARGS = {"betas": (0.95, 0.99), "weight_decay": 0.01, "d0": 1e-4, "d_coef": 2.0}


def _params() -> list[torch.nn.Parameter]:
    """A matrix (factored second moment), a 3x3 convolution and a bias (full ones: no side reaches 32)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),
        torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g)),
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


def test_it_steps_as_the_class_kohya_builds_and_averages_in_eval_mode(tmp_path):
    plan = compile_spec(
        write_spec(tmp_path, steps=2), [*SPEC, "optimizer.text_encoder_lr=0.5", "train.text_encoder=true"]
    )
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("prodigy_plus_schedulefree", (0.95, 0.99), 0.01)
    p = o.prodigy_plus
    assert (p.d0, p.d_coef, p.beta3, p.use_bias_correction) == (1e-4, 2.0, math.sqrt(0.99), False)
    assert "ProdigyPlusScheduleFree: d0 0.0001, d_coef 2" in summary_text(plan)
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours[:2], [ours[2:]], o), o)
    assert type(optimizer) is ProdigyPlusScheduleFree
    groups = [{"params": theirs[:2], "lr": 1.0}, {"params": theirs[2:], "lr": 0.5}]
    reference = ProdigyPlusScheduleFree(groups, lr=1.0, **KWARGS)  # kohya: cls(params, lr=lr, **args)
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs) and not same(ours, _params())
    assert [g["d"] for g in optimizer.param_groups] == [g["d"] for g in reference.param_groups]
    assert optimizer.param_groups[0]["d"] > 1e-4  # d grew from d0
    with averaged_weights(optimizer, o):  # kohya's optimizer_eval_fn around sampling and saving
        reference.eval()
        assert same(ours, theirs) and not optimizer.param_groups[0]["train_mode"]
        reference.train()
    assert same(ours, theirs) and optimizer.param_groups[0]["train_mode"]
    # the state the memory estimate counts: z (4 bytes), p0 and s over every 11th element in bf16, and the
    # second moment (factored for the matrix)
    state = [optimizer.state[q] for q in ours]
    assert "exp_avg_sq_row" in state[0] and "exp_avg_sq" in state[1]
    matrix = sum(t.numel() * t.element_size() for t in state[0].values() if torch.is_tensor(t))
    assert matrix <= OPTIMIZER_STATE_BYTES["prodigy_plus_schedulefree"] * ours[0].numel()


def test_a_run_resumes_bit_exact_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    whole = execute(compile_spec(spec, [*SPEC, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*SPEC, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    # saved in eval mode (averaged weights), loaded with weights_only=True: the groups' d and step count k
    saved = load_state(latest_checkpoint(tmp_path / "parts"))["optimizer"]
    group = saved["param_groups"][0]
    assert (group["k"], group["train_mode"], group["d0"]) == (3, False, 1e-4) and group["d"] >= 1e-4
    assert all("z" in s for s in saved["state"].values())
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = final_weights(execute(compile_spec(spec, ["output.dir=base", "optimizer.lr=1e-12"])).final)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained
