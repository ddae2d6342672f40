"""One of two processes failing (torchrun, gloo, this CPU): all stop, one clear message, never a hang, and the
output folder resumes.

Each failure is real and on process 1 only: an exception no dbspec code expects (the fault harness's
`micro_batch:RAISE`, DBSPEC_KILL_RANK=1), a loss that really is NaN (`loss:NAN` multiplies the loss tensor by
NaN before the finite check), and an image changed after planning that only process 1 checks (each process
verifies its share of the images, data.own_share). Process 0 then finds its collective failing, says only that
it stops, and is ended by the launcher; torchrun's summary names process 1 as the root cause.

Each failure leaves an output folder a resume starts from: no final weights, no temporary file, the last
checkpoint written before it (step 2, or none). The NaN test resumes its folder, two processes, to the
uninterrupted run's weights bit for bit; the others' folders are checked alike but not resumed: the
exception's is the NaN's (step 2 of the same spec; test_processes.py's kill -9 test resumes one more), and
the changed file's has no checkpoint, from which --resume starts afresh (test_kohya_outputs.py
checks that)."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import torch

from dbspec.plan.io import plan_to_json
from dbspec.runtime.checkpoints import latest_checkpoint
from dbspec.runtime.outdir import _TEMPORARY
from tests.runtime.runspec import CPU, compile_spec
from tests.runtime.test_processes import _launch, _spec, _weights

pytestmark = pytest.mark.slow

ON_RANK_1 = {"DBSPEC_KILL_RANK": "1"}


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if _TEMPORARY.match(p.name))


def _assert_one_clear_failure(stderr: str, cause: str) -> None:
    """Process 1's cause appears once; process 0 says only that it stops; no Python traceback from either
    process (torchrun prints its own, one); torchrun names process 1 as the root cause."""
    assert stderr.count(f"process 1: {cause}") == 1, stderr[-4000:]
    assert cause not in stderr.replace(f"process 1: {cause}", ""), stderr[-4000:]
    assert stderr.count("Traceback (most recent call last)") <= 1, stderr[
        -6000:
    ]  # torchrun's ChildFailedError
    assert "/runtime/" not in stderr and "dbspec/cli.py" not in stderr, stderr[-6000:]  # none of ours
    root = stderr[stderr.index("Root Cause") :]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root), root


def _assert_resumable(spec: Path, from_step: int) -> None:
    """The failed run's output folder: no final weights, no temporary, its latest checkpoint `from_step`'s."""
    out = spec.parent / "out"
    assert not (out / "final").exists()
    assert _leftovers(out) == []  # no half-written checkpoint (nor any other temporary)
    latest = latest_checkpoint(out)
    assert (latest.name if latest else None) == (f"step-{from_step:06d}" if from_step else None)


def _assert_resumes(spec: Path, reference: dict[str, torch.Tensor], from_step: int) -> None:
    """A resumable folder (`_assert_resumable`), and --resume then ends with the `reference` weights."""
    _assert_resumable(spec, from_step)
    out = spec.parent / "out"
    resumed = _launch(spec, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = _weights(out)
    assert after.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(after[key], value), key


def test_an_exception_on_one_process_stops_both(tmp_path):
    """Process 1 raises in its third micro-batch (step 3, after the step-2 checkpoint)."""
    spec = _spec(tmp_path, batch=1, accumulation=1)
    failed = _launch(spec, env={**ON_RANK_1, "DBSPEC_KILL_AT": "micro_batch@3:RAISE"}, torchrun=True)
    assert failed.returncode != 0
    _assert_one_clear_failure(failed.stderr, "InjectedFault: fault injected at `micro_batch`")
    assert "note: process 0: stopped: another process failed" in failed.stderr or "SIGTERM" in failed.stderr
    _assert_resumable(spec, from_step=2)  # resumed: test_a_nan_loss_on_one_process_stops_both's


def test_a_nan_loss_on_one_process_stops_both(two_processes, tmp_path):
    spec = _spec(tmp_path, batch=1, accumulation=1)
    failed = _launch(spec, env={**ON_RANK_1, "DBSPEC_KILL_AT": "loss@3:NAN"}, torchrun=True)
    assert failed.returncode != 0
    _assert_one_clear_failure(failed.stderr, "loss became nan at step 3")
    assert failed.stderr.count("= help: the last good checkpoint is intact") == 1, failed.stderr[-4000:]
    _assert_resumes(spec, _weights(two_processes), from_step=2)


def test_a_file_only_one_process_checks_stops_both(tmp_path):
    """A plan made for two processes (`dbspec plan --target cpu:x2 --json`), then an image changed on disk:
    process 1 checks images 1, 3, 5 (its share), process 0 the others and waits for it."""
    spec = _spec(tmp_path, batch=1, accumulation=1)
    plan = compile_spec(spec, env=attrs.evolve(CPU, processes=2))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan_to_json(plan))
    image = Path(plan.datasets[0].images[1].path)  # in process 1's share
    original = image.read_bytes()
    image.write_bytes(original[:100])  # truncated: unreadable pixels, and not the planned bytes
    failed = _launch(plan_file, torchrun=True)
    assert failed.returncode != 0
    _assert_one_clear_failure(failed.stderr, f"cannot load `{image}`")
    _assert_resumable(plan_file, from_step=0)  # no checkpoint: --resume starts afresh
