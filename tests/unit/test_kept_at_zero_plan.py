"""The plan and its summary for a group kept at rate 0 (optimizer.text_encoder_at_zero / denoiser_at_zero =
"keep", issue 12): "keep" where the optimizer or schedule moves the group (DBS606, the summary says it
moves), "hold" where nothing does, OneCycleLR at a max_lr of 0 for it included (DBS229, the summary says it
stays still): a kept group nothing moves is a held one, so neither says it moves. Compiles only (no torch)."""

from __future__ import annotations

import pytest

from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU, NO_REPORT, compile_spec, summary_text, write_spec

TE = "[train]\ntext_encoder = true\n"
CYCLE = ['schedule.lr_schedule="one_cycle"', "schedule.t_max=4"]
TEXT = ["optimizer.lr=1e-4", "optimizer.text_encoder_lr=0", 'optimizer.text_encoder_at_zero="keep"']
DENOISER = ["optimizer.lr=0", "optimizer.text_encoder_lr=1e-4", 'optimizer.denoiser_at_zero="keep"']


def _plan(tmp_path, settings: list[str]):
    return compile_spec(write_spec(tmp_path, steps=4, extra=TE), [*CYCLE, *settings])


@pytest.mark.parametrize(
    ("max_lr", "moves"),
    [
        ("schedule.max_lr=2e-4", True),  # the peak for every group: the kept one rises to it
        ("schedule.max_lr=0", False),  # each group's own rate: 0 for the kept one, held there
        ("schedule.max_lr={ denoiser = 1e-4, text_encoder = 0 }", False),
    ],
)
def test_a_text_encoder_kept_under_one_cycle_moves_only_where_its_max_lr_is_above_zero(
    tmp_path, max_lr, moves
):
    plan = _plan(tmp_path, [*TEXT, max_lr])
    assert plan.optimizer.text_encoder_lr == 0
    assert plan.optimizer.text_encoder_at_zero == ("keep" if moves else "hold")
    kept = [w for w in plan.warnings if "DBS606" in w]
    held = [w for w in plan.warnings if "DBS229" in w]
    assert (bool(kept), bool(held)) == (moves, not moves), plan.warnings
    if moves:
        assert "(max_lr 0.0002)" in kept[0] and "and move" in kept[0]
    summary = summary_text(plan)
    said = "kept in the optimizer at rate 0: the optimizer and schedule move it, DBS606"
    assert (said in summary) == moves
    assert ("(held: gradients computed and clipped, weights still)" in summary) == (not moves)


@pytest.mark.parametrize(
    ("max_lr", "moves"),
    [
        ("schedule.max_lr=2e-4", True),
        ("schedule.max_lr={ denoiser = 0, text_encoder = 1e-4 }", False),
    ],
)
def test_a_denoiser_kept_under_one_cycle_moves_only_where_its_max_lr_is_above_zero(tmp_path, max_lr, moves):
    plan = _plan(tmp_path, [*DENOISER, max_lr])
    assert plan.optimizer.lr == 0 and plan.train_denoiser
    assert plan.optimizer.denoiser_at_zero == ("keep" if moves else "hold")
    assert any("DBS606" in w for w in plan.warnings) == moves, plan.warnings
    summary = summary_text(plan)
    assert ("the denoiser kept in the optimizer at rate 0" in summary) == moves
    assert ("the denoiser held: gradients computed and clipped" in summary) == (not moves)


BOTH = ["optimizer.lr=0", "optimizer.text_encoder_lr=0"]
KEEP_BOTH = ['optimizer.denoiser_at_zero="keep"', 'optimizer.text_encoder_at_zero="keep"']


@pytest.mark.parametrize(
    ("max_lr", "kept"),
    [
        ("schedule.max_lr=2e-4", ("keep", "keep")),
        ("schedule.max_lr={ denoiser = 0, text_encoder = 1e-4 }", ("hold", "keep")),
        ("schedule.max_lr={ denoiser = 1e-4, text_encoder = 0 }", ("keep", "hold")),
    ],
)
def test_the_denoiser_and_text_encoder_both_at_rate_zero_each_kept_where_the_schedule_lifts_it(
    tmp_path, max_lr, kept
):
    """kohya train_db.py's groups at learning_rate 0 with learning_rate_te 0 (or none) under OneCycleLR:
    both keeps together (was DBS200): each part the schedule lifts is "keep" (DBS606, the summary says it
    moves), a part whose max_lr is 0 is held (DBS229, the summary says it stays still)."""
    plan = _plan(tmp_path, [*BOTH, *KEEP_BOTH, max_lr])
    o = plan.optimizer
    assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero, o.text_encoder_at_zero) == (0, 0, *kept)
    assert plan.train_denoiser and plan.train_text_encoder
    warned = {"DBS606": kept.count("keep"), "DBS229": kept.count("hold")}
    assert {code: sum(code in w for w in plan.warnings) for code in warned} == warned, plan.warnings
    summary = summary_text(plan)
    denoiser = "the denoiser kept in the optimizer at rate 0" if kept[0] == "keep" else "the denoiser held"
    text = "text encoder lr 0 (kept in" if kept[1] == "keep" else "text encoder lr 0 (held:"
    assert denoiser in summary and text in summary


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        # the schedule lifts the text encoder, which nothing keeps
        (['optimizer.denoiser_at_zero="keep"'], 'optimizer.text_encoder_at_zero = "keep" to let it move'),
        (['optimizer.text_encoder_at_zero="keep"'], 'optimizer.denoiser_at_zero = "keep" to let it move'),
        ([*KEEP_BOTH, "schedule.max_lr=0"], "no schedule lifts either off rate 0"),  # nothing trains
    ],
)
def test_both_at_rate_zero_without_a_keep_for_each_lifted_part_is_refused(tmp_path, settings, says):
    """A part the schedule moves off rate 0 that its option does not keep, or a schedule that lifts neither
    (a run that changes nothing): DBS200, saying what to set."""
    spec = write_spec(tmp_path, steps=4, extra=TE)
    planned = plan_spec(spec, CPU, str(spec), [NO_REPORT, *CYCLE, *BOTH, "schedule.max_lr=2e-4", *settings])
    assert planned.plan is None
    [refused] = [d for d in planned.diagnostics if d.code == "DBS200"]
    assert says in f"{refused.message} {refused.help}", refused
