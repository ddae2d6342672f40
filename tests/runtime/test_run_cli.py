"""`dbspec run` as a user runs it: the quickstart, a plan file, and Ctrl-C then --resume (a real signal)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.runtime.execute import RunError, execute
from tests.runtime.runspec import ROOT, compile_spec, write_spec

pytestmark = pytest.mark.slow


def test_quickstart_end_to_end(tmp_path):
    """The README's first command, outputs redirected into tmp, and its 60 steps (validated and checkpointed
    every 30, logged every 10) scaled down tenfold: the same run's shape (two validations, two checkpoints,
    a metrics line per logging step) in a tenth of its steps."""
    sets = {
        "output.dir": f"{tmp_path / 'out'}",
        "cache.dir": f"{tmp_path / 'cache'}",
        "schedule.steps": "6",
        "validation.every": "3",
        "checkpoints.every": "3",
        "logging.every": "1",
    }
    args = ["run", str(ROOT / "specs" / "quickstart.toml")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert "finished 6 steps" in result.output
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "samples" / "step-000003" / "grid.png").exists()
    assert (out / "samples" / "step-000006" / "grid.png").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000006"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 6


def test_run_a_written_plan(tmp_path):
    spec = write_spec(tmp_path, steps=2)
    plan_file = tmp_path / "plan.json"
    runner = CliRunner()
    assert runner.invoke(app, ["plan", str(spec), "--target", "cpu", "--json", str(plan_file)]).exit_code == 0
    result = runner.invoke(app, ["run", str(plan_file)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "final").exists()


def _wait_for(path: Path, predicate, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and predicate(path):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {path}")


# A value that needs shell quoting; it is part of the plan (and so of the run hash) though nothing validates.
NEGATIVE = "validation.negative_prompt=\"blurry, 'low' quality\""  # --set values are TOML


def test_ctrl_c_checkpoints_and_the_printed_command_resumes_the_run(tmp_path):
    """The printed resume command, followed as a user would (shell-split), resumes the same run: it repeats
    every --set the run was started with (without them the plan is another, and refused), and finishes it. A
    run stopped at a step boundary (Ctrl-C only asks the loop to stop at the next one, as `stop_after` does)
    resumes to the uninterrupted run's weights bit for bit: test_run.py's
    test_interrupted_then_resumed_run_is_bit_identical (a full fine-tune, as here). Without --resume, the
    same plan's folder with a checkpoint is refused, so this run did resume."""
    spec = write_spec(tmp_path, steps=30, extra="[logging]\nevery = 1\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbspec.cli", "run", str(spec), "--set", NEGATIVE],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "out" / "metrics.jsonl"
    try:
        _wait_for(metrics, lambda p: len(p.read_text().splitlines()) >= 3, timeout=240)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    hint = next(line for line in output.splitlines() if line.startswith("resume with: "))
    argv = shlex.split(hint.removeprefix("resume with: "))
    assert argv == ["dbspec", "run", str(spec), "--set", NEGATIVE, "--resume"]
    stopped_at = int((tmp_path / "out" / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= stopped_at < 30

    with pytest.raises(RunError):  # the old hint's command: without the --set
        execute(compile_spec(spec), resume=True)
    resumed = CliRunner().invoke(app, argv[1:])
    assert resumed.exit_code == 0 and "finished 30 steps" in resumed.output, resumed.output
    assert (tmp_path / "out" / "final" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_run_failure_prints_the_reason_the_spec_line_and_a_hint(tmp_path):
    spec = write_spec(tmp_path, steps=6)
    result = CliRunner().invoke(
        app, ["run", str(spec), "--set", "optimizer.lr=1e30", "--set", "optimizer.max_grad_norm=0"]
    )
    assert result.exit_code == 1
    assert "error: loss became" in result.output
    assert "--> <--set>" in result.output  # the lr came from the command line
    assert "= help: the last good checkpoint is intact" in result.output
    assert "Traceback" not in result.output
