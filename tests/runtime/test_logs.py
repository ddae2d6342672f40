"""metrics.jsonl holds each step once, across kills and resumes."""

from __future__ import annotations

import json

from dbspec.plan.model import LoggingPlan
from dbspec.runtime.logs import MetricsLog

PLAN = LoggingPlan(every=1, tensorboard=False)


def rows(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_run_drops_the_rows_after_its_checkpoint_and_a_torn_row(tmp_path):
    first = MetricsLog(tmp_path, PLAN, start_step=0)
    for step in range(1, 8):
        first.write(step, {"loss": 0.1 * step})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 8, "lo')  # killed mid-write
    resumed = MetricsLog(tmp_path, PLAN, start_step=4)  # the newest checkpoint is step 4
    for step in range(5, 9):
        resumed.write(step, {"loss": 0.2 * step})
    resumed.close()
    assert rows(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[4])["loss"] == 1.0


def test_an_uninterrupted_file_is_left_as_it_is(tmp_path):
    log = MetricsLog(tmp_path, PLAN, start_step=0)
    log.write(1, {"loss": 1.0})
    log.close()
    before = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    MetricsLog(tmp_path, PLAN, start_step=1).close()
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == before
