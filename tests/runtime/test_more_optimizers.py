"""Optimizers kohya users write (issue 12): transformers Adafactor's beta1 / clip_threshold / decay_rate /
eps, bitsandbytes' AdEMAMix (8-bit and paged) and the schedulefree package's optimizers, through the real
optimizer and loop on a tiny SD1 model. Each optimizer equals the class kohya's get_optimizer builds
(`cls(params, lr=lr, **optimizer_args)`), step for step, and a run resumes bit-exact."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import schedulefree
import torch
from transformers.optimization import Adafactor

from dbspec.runtime.execute import execute
from dbspec.runtime.optim import averaged_weights, make_optimizer, param_groups
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),  # 5120 elements: 8-bit state in bitsandbytes
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


STEPS = 2  # stopped after step 1 and resumed: the resumed step restores the optimizer's whole state


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The final weights of the spec's own run (its default optimizer) at lr 1e-12, by `[extra]` table:
    what a trained run's weights must differ from. One run per table for the module, not one per test."""
    made: dict[str, dict] = {}

    def weights(extra: str = "") -> dict:
        if extra not in made:
            spec = write_spec(tmp_path_factory.mktemp("untrained"), steps=STEPS, extra=extra)
            made[extra] = final_weights(execute(compile_spec(spec, ["optimizer.lr=1e-12"])).final)
        return made[extra]

    return weights


def _resumes_bit_exact(tmp_path, untrained, overrides: list[str], extra: str = "") -> dict:
    """The run of `overrides` whole, and stopped after step 1 and resumed: the same losses and final weights
    bit for bit, which differ from the untrained run's (`untrained`, a full fine-tune's; None: the caller
    checks that the run trained). Returns the final weights."""
    spec = write_spec(tmp_path, steps=STEPS, extra=extra)
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == STEPS
    plan = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(plan, stop_after=1)
    assert first.status == "interrupted" and first.steps == 1
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if untrained is not None:
        base = untrained(extra)
        assert base.keys() == a.keys() and any(not torch.equal(a[k], base[k]) for k in a)  # it trained
    return a


# --- Adafactor's other arguments ----------------------------------------------------------------------------

ADAFACTOR = [
    'optimizer.kind="adafactor"',
    "optimizer.lr=1e-3",
    "optimizer.beta1=0.9",
    "optimizer.clip_threshold=2.0",
    "optimizer.decay_rate=-0.5",
    "optimizer.adafactor_eps=[1e-29, 2e-3]",
    "optimizer.scale_parameter=true",
]


def test_adafactor_arguments_reach_transformers_adafactor(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2), ADAFACTOR)
    o = plan.optimizer
    a = o.adafactor
    assert (a.beta1, a.clip_threshold, a.decay_rate, a.eps) == (0.9, 2.0, -0.5, (1e-29, 2e-3))
    assert "Adafactor beta1 0.9, clip_threshold 2, decay_rate -0.5, eps (1e-29, 0.002)" in summary_text(plan)
    ours, theirs, plain = _params(), _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    # kohya: Adafactor(params, lr=learning_rate, relative_step=False, **optimizer_args)
    reference = Adafactor(
        theirs,
        lr=1e-3,
        relative_step=False,
        scale_parameter=True,
        warmup_init=False,
        beta1=0.9,
        clip_threshold=2.0,
        decay_rate=-0.5,
        eps=(1e-29, 2e-3),
        weight_decay=o.weight_decay,
    )
    default = Adafactor(plain, lr=1e-3, relative_step=False, weight_decay=o.weight_decay)
    step_alike([optimizer, reference, default], [ours, theirs, plain])
    assert same(ours, theirs) and not same(ours, plain)  # the arguments change the updates
    assert "exp_avg" in optimizer.state[ours[0]]  # beta1: a first moment


def test_adafactor_with_beta1_resumes_bit_exact(tmp_path, untrained):
    _resumes_bit_exact(tmp_path, untrained, ADAFACTOR)


# --- AdEMAMix (bitsandbytes) ------------------------------------------------------------------------------

ADEMAMIX = {
    "ademamix": bnb.optim.AdEMAMix,
    "ademamix8bit": bnb.optim.AdEMAMix8bit,
    "paged_ademamix": bnb.optim.PagedAdEMAMix,
    "paged_ademamix8bit": bnb.optim.PagedAdEMAMix8bit,
}


@pytest.mark.parametrize("kind", list(ADEMAMIX))
def test_each_ademamix_kind_steps_as_the_class_kohya_builds(tmp_path, kind):
    args = ["optimizer.alpha=8.0", "optimizer.t_alpha=4", "optimizer.t_beta3=5", "optimizer.weight_decay=0.0"]
    plan = compile_spec(
        write_spec(tmp_path, steps=2), [f'optimizer.kind="{kind}"', "optimizer.lr=1e-3", *args]
    )
    o = plan.optimizer
    assert o.betas == (0.9, 0.999, 0.9999) and o.ademamix is not None
    assert (o.ademamix.alpha, o.ademamix.t_alpha, o.ademamix.t_beta3) == (8.0, 4, 5)
    assert (o.ademamix.eight_bit, o.ademamix.paged) == (kind.endswith("8bit"), kind.startswith("paged"))
    text = summary_text(plan)
    assert "AdEMAMix" in text and "alpha 8, warm-up of alpha over 4 steps, beta3 over 5 steps" in text
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is ADEMAMIX[kind]
    # kohya: bitsandbytes.optim.<class>(params, lr=lr, betas=..., alpha=8.0, t_alpha=4, t_beta3=5, ...)
    reference = ADEMAMIX[kind](
        theirs, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=8.0, t_alpha=4, t_beta3=5, weight_decay=0.0
    )
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs) and not same(ours, _params())
    state = optimizer.state[ours[0]]
    assert state["state1"].dtype == (torch.uint8 if kind.endswith("8bit") else torch.float32)


# The paged kinds run unpaged on the CPU (bitsandbytes' get_state_buffer: zeros beside the parameter, as
# the unpaged class; runtime/optim.py, DBS314): the same algorithm and state as ademamix / ademamix8bit,
# whose runs cover theirs; test_each_ademamix_kind_steps_as_the_class_kohya_builds steps each paged class.
@pytest.mark.parametrize("kind", [k for k in ADEMAMIX if not k.startswith("paged_")])
def test_an_ademamix_run_trains_and_resumes_bit_exact(tmp_path, untrained, kind):
    _resumes_bit_exact(tmp_path, untrained, [f'optimizer.kind="{kind}"', "optimizer.lr=1e-4"])


# --- schedule-free (schedulefree) --------------------------------------------------------------------------

SCHEDULEFREE = {
    "adamw_schedulefree": (schedulefree.AdamWScheduleFree, {"warmup_steps": 2, "betas": (0.9, 0.999)}),
    "sgd_schedulefree": (schedulefree.SGDScheduleFree, {"warmup_steps": 2, "momentum": 0.9}),
    "radam_schedulefree": (schedulefree.RAdamScheduleFree, {"silent_sgd_phase": True, "betas": (0.9, 0.999)}),
}


@pytest.mark.parametrize("kind", list(SCHEDULEFREE))
def test_each_schedulefree_kind_steps_as_the_class_kohya_builds(tmp_path, kind):
    cls, kwargs = SCHEDULEFREE[kind]
    warm = ["optimizer.schedulefree_warmup_steps=2"] if "warmup_steps" in kwargs else []
    overrides = [f'optimizer.kind="{kind}"', "optimizer.lr=1e-3", "optimizer.schedulefree_r=0.5", *warm]
    plan = compile_spec(write_spec(tmp_path, steps=2), overrides)
    o = plan.optimizer
    assert o.schedulefree is not None and o.schedulefree.r == 0.5 and plan.schedule.lr_schedule == "constant"
    text = summary_text(plan)
    assert "schedule-free: no LR schedule, the iterates averaged" in text and "eval mode" in text
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is cls
    # kohya: cls(params, lr=lr, **optimizer_args), then optimizer.train()
    reference = cls(theirs, lr=1e-3, weight_decay=o.weight_decay, r=0.5, **kwargs)
    reference.train()
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs)
    # eval mode: the averaged weights (as kohya's optimizer_eval_fn before sampling and saving), then back
    training = [p.detach().clone() for p in ours]
    with averaged_weights(optimizer, o):
        reference.eval()
        assert same(ours, theirs) and not same(ours, training)
    reference.train()
    assert same(ours, theirs)


def _saved_in_eval_mode(out: Path) -> None:
    """The checkpoint was written in eval mode: its optimizer state says so (resuming switched back)."""
    state = torch.load(next(out.rglob("training_state.pt")), weights_only=False)
    assert state["optimizer"]["param_groups"][0]["train_mode"] is False


# adamw_schedulefree's state and eval-mode checkpoint resume in the LoRA run below (and in
# test_denoiser_rate_zero.py and test_optimizer_split.py): the full fine-tunes here are the other two classes'
@pytest.mark.parametrize("kind", [k for k in SCHEDULEFREE if k != "adamw_schedulefree"])
def test_a_schedulefree_run_saves_the_averaged_weights_and_resumes_bit_exact(tmp_path, untrained, kind):
    _resumes_bit_exact(tmp_path, untrained, [f'optimizer.kind="{kind}"', "optimizer.lr=1e-3"])
    _saved_in_eval_mode(tmp_path / "parts")


def test_a_schedulefree_lora_run_validates_on_the_averaged_weights_and_resumes_bit_exact(tmp_path):
    """Validation at steps 1 and 2 switches to eval mode and back on the way (kohya's optimizer_eval_fn /
    optimizer_train_fn around sampling); the interrupted and resumed run still ends bit-exact."""
    extra = (
        '[adapter]\nkind = "lora"\nrank = 2\n\n[validation]\nevery = 1\nsteps = 2\n'
        'prompts = ["a photo of ohwx toy"]\n'
    )
    final = _resumes_bit_exact(
        tmp_path, None, ['optimizer.kind="adamw_schedulefree"', "optimizer.lr=1e-2"], extra
    )
    assert list((tmp_path / "whole" / "samples").glob("step-000001/*.png"))
    _saved_in_eval_mode(tmp_path / "parts")
    # it trained: the LoRA up matrices start at zero
    ups = [v for k, v in final.items() if ".lora_B." in k or ".lora.up." in k]
    assert ups and any(bool(v.abs().max() > 1e-4) for v in ups)


# --- torch's RAdam (kohya's optimizer_type RAdam: getattr(torch.optim, "RAdam")) ----------------------------


def test_radam_steps_as_torch_radam_and_resumes_bit_exact(tmp_path, untrained):
    overrides = ['optimizer.kind="radam"', "optimizer.lr=1e-3", "optimizer.betas=[0.9, 0.99]"]
    plan = compile_spec(write_spec(tmp_path / "plan", steps=2), [*overrides, "optimizer.weight_decay=0.01"])
    o = plan.optimizer
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is torch.optim.RAdam
    reference = torch.optim.RAdam(theirs, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    step_alike([optimizer, reference], [ours, theirs])
    assert same(ours, theirs) and not same(ours, _params())
    _resumes_bit_exact(tmp_path / "run", untrained, overrides)
