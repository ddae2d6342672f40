"""schedule.start_step / start_epoch / skip_data / start_lr (kohya's initial_step, initial_epoch and
skip_until_initial_step) on the built-in tiny SD1 model: a run that starts later takes, step for step, the
batches, noise and LR an uninterrupted run takes from there; without skip_data only the epoch moves; and an
interrupted run that started later resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.frontend import plan_spec
from dbspec.plan.validate import plan_problems
from tests.runtime.runspec import CPU, compile_spec, final_weights, summary_text, write_spec

# 6 batches per epoch (toy: 6 images x 2 repeats, batch 2), 10 steps = 2 epochs
STILL = "1e-30"  # lr 0 is refused (DBS: a run that changes nothing); this one moves no weight that matters
LOGGED = """
[logging]
every = 1
tensorboard = false
"""


def _plan(tmp: Path, schedule: str, *, lr: str = "1e-3"):
    path = write_spec(tmp, steps=10, extra=LOGGED)
    text = path.read_text().replace("lr = 1e-3", f"lr = {lr}")
    path.write_text(
        text.replace(
            "batch_size = 2",
            f'batch_size = 2\nnoise_streams = "micro_batch"\nlr_schedule = "linear"\n{schedule}',
        )
    )
    return compile_spec(path)


def _rows(run) -> list[dict]:
    lines = (Path(run.output) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "loss" in row]


@pytest.fixture(scope="module")
def still_run(tmp_path_factory):
    """The uninterrupted 10-step run at the negligible lr, made once per test process: the reference of
    test_skipping_data_continues_the_uninterrupted_run (its losses) and test_start_lr_places_the_schedule
    (its logged lr), which only read it."""
    return execute(_plan(tmp_path_factory.mktemp("still"), "", lr=STILL))


def test_skipping_data_continues_the_uninterrupted_run(tmp_path, still_run):
    """A negligible lr holds the weights, so with noise seeded per micro-batch from the global step a later
    start's losses equal the uninterrupted run's from that step only when its batches, captions and noise
    are the same."""
    whole = still_run
    later = execute(_plan(tmp_path / "b", "start_step = 7\nskip_data = true", lr=STILL))
    assert whole.steps == later.steps == 10
    assert len(later.losses) == 3
    assert later.losses == pytest.approx(whole.losses[7:], rel=1e-6)
    assert later.losses != pytest.approx(whole.losses[4:7], rel=1e-3)  # other batches: other losses
    assert [r["epoch"] for r in _rows(later)] == [r["epoch"] for r in _rows(whole)][7:] == [1, 1, 1]


def test_start_lr_places_the_schedule(tmp_path, still_run):
    """The logged lr of later starts against the uninterrupted run's, all at the negligible lr (the schedule's
    factors are the lr's alike)."""
    whole = _rows(still_run)
    at_start = _rows(
        execute(_plan(tmp_path / "b", 'start_step = 4\nskip_data = true\nstart_lr = "start_step"', lr=STILL))
    )
    first = _rows(execute(_plan(tmp_path / "c", "start_step = 4\nskip_data = true", lr=STILL)))
    assert [r["step"] for r in at_start] == [r["step"] for r in first] == list(range(5, 11))
    assert [r["lr"] for r in at_start] == [r["lr"] for r in whole[4:]]
    assert [r["lr"] for r in first] == [
        r["lr"] for r in whole[:6]
    ]  # kohya: its scheduler from its first step
    assert first[0]["lr"] > at_start[0]["lr"]


def test_without_skipping_only_the_epoch_moves(tmp_path):
    """kohya without skip_until_initial_step: the counter from 0, the data from the start epoch's first batch,
    and the run ends with its last epoch (here after 6 steps, one epoch, of the 10 asked)."""
    plan = _plan(tmp_path / "b", "start_epoch = 2", lr=STILL)
    assert plan.schedule.start is not None and plan.schedule.start.end_step == 6
    later = execute(plan)
    rows = _rows(later)
    assert later.status == "finished" and later.steps == 6
    assert [r["step"] for r in rows] == list(range(1, 7)) and {r["epoch"] for r in rows} == {1}


def test_a_later_start_resumes_bit_exactly(tmp_path):
    schedule = 'start_step = 3\nskip_data = true\nstart_lr = "start_step"'
    whole = execute(_plan(tmp_path / "a", schedule))
    plan = _plan(tmp_path / "b", schedule)
    first = execute(plan, stop_after=6)
    assert first.status == "interrupted" and first.losses == whole.losses[:3]
    second = execute(plan, resume=True)
    assert second.steps == 10 and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_start_past_the_end_is_refused_and_a_start_is_summarised(tmp_path):
    path = write_spec(tmp_path, steps=10)
    text = path.read_text()
    path.write_text(text.replace("batch_size = 2", "batch_size = 2\nstart_epoch = 3"))
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None
    [problem] = [d for d in planned.diagnostics if d.code == "DBS393"]
    assert "start_epoch = 3 starts at step 12, not below the run's 10 steps" in problem.message
    assert problem.span is not None and problem.span.line == text.splitlines().index("batch_size = 2") + 2
    path.write_text(text.replace("batch_size = 2", "batch_size = 2\nstart_step = 8\nskip_data = true"))
    summary = summary_text(compile_spec(path))
    assert "step 8: steps 9-10 train; data from epoch 2, batch 3" in summary


def test_a_plan_file_with_an_impossible_start_is_refused(tmp_path):
    path = write_spec(tmp_path, steps=10)
    path.write_text(
        path.read_text().replace("batch_size = 2", "batch_size = 2\nstart_step = 8\nskip_data = true")
    )
    plan = compile_spec(path)
    assert plan_problems(plan) == []
    start = plan.schedule.start
    bad = attrs.evolve(
        plan, schedule=attrs.evolve(plan.schedule, start=attrs.evolve(start, position=6, step=10))
    )
    problems = " ".join(plan_problems(bad))
    assert "step 10, end_step 10" in problems and "found epoch 1, position 6" in problems
