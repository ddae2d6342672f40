"""Two real processes on this CPU (gloo): equivalence with one process, bit-exact resume.

The processes are forked from a fork server that imported the runtime once, with the environment torchrun
gives its workers (tests/runtime/forked.py run_ranks): a fresh interpreter's imports cost 5-7 s per process
on this machine, most of a launch. The fault tests (test_process_faults.py) and the killed-process test
launch through torchrun itself, whose report they check. The launches are few:
one uninterrupted two-process run shared by the tests (`two_processes`, a session fixture in conftest.py,
shared with test_process_faults.py) and the runs each test interrupts and resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from tests.runtime.forked import SOCKET_ENV, launch_failure, run_ranks, torchrun_worker
from tests.runtime.runspec import CLASS_DATASET, NO_REPORT, compile_spec, write_spec

pytestmark = pytest.mark.slow

STEPS = 4
# batch 1 per process, checkpoints every 2 steps: the interrupted run stops after step 3 (see below)
EXTRA = """
[checkpoints]
every = 2
"""
LAUNCH_TIMEOUT_S = 300  # a hang (a process waiting on a dead peer) fails the test instead of the suite


def _launch(
    spec: Path, *args: str, env: dict | None = None, torchrun: bool = False
) -> subprocess.CompletedProcess:
    """`dbspec run spec` as two processes on this CPU (gloo): forked with torchrun's environment
    (tests/runtime/forked.py run_ranks: no fresh interpreter's imports per process), or under torchrun itself
    (`torchrun`: the fault tests, which check what torchrun reports; the workers it starts are forked too,
    forked.py torchrun_worker)."""
    full_env = {k: v for k, v in os.environ.items() if k != "DBSPEC_KILL_AT"}
    full_env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    # rank 0 would import matplotlib for report.html: about a second per launch
    argv = ["run", str(spec), *(("--set", NO_REPORT) if spec.suffix == ".toml" else ()), *args]
    if not torchrun:
        return run_ranks(argv, env=full_env, cwd=Path.cwd(), timeout=LAUNCH_TIMEOUT_S)
    # each worker torchrun starts: a forked `dbspec` (tests/runtime/forked.py torchrun_worker), not a fresh
    # interpreter's imports
    client, full_env[SOCKET_ENV] = torchrun_worker()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on a free port: parallel test workers never collide
        "--nproc_per_node",
        "2",
        client,
        *argv,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=full_env, timeout=LAUNCH_TIMEOUT_S, check=False
    )


def _spec(tmp: Path, batch: int, accumulation: int, streams: str = "auto") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_spec(tmp, steps=STEPS, extra=EXTRA)
    text = path.read_text().replace("batch_size = 2", f"batch_size = {batch}\naccumulation = {accumulation}")
    text = text.replace("[schedule]", f'[schedule]\nnoise_streams = "{streams}"')
    text = text.replace("lr = 1e-3", 'kind = "sgd"\nlr = 0.1')  # linear in the gradient: see the tolerance
    path.write_text(text)
    return path


def _weights(out: Path) -> dict[str, torch.Tensor]:
    files = sorted((out / "final").rglob("*.safetensors"))
    assert files, f"no final weights under {out}"
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update({f"{file.relative_to(out)}:{k}": v for k, v in load_file(file).items()})
    return tensors


def _cache_files(cache: Path) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """Every cache entry: its metadata and its tensors' bytes (the header's JSON key order is safetensors'
    hash-map order, which differs between processes; the data is what must match)."""
    files = {}
    for path in sorted(cache.rglob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            tensors = {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}  # noqa: SIM118
            files[str(path.relative_to(cache))] = (handle.metadata(), tensors)
    assert any(name.startswith("latents/") for name in files) and any(
        name.startswith("text/") for name in files
    )
    return files


def test_a_failed_launch_shows_each_process_cause():
    """The assertion message of a failed two-process launch holds each process's own cause, however long the
    output after it: the first process's plan and stack dump, then the second's note (the last 4000
    characters of the whole output once held only the second process's note and the first one's plan)."""
    plan = "\n".join(f"plan line {i} " + "x" * 60 for i in range(200))
    output = (
        f"[rank 0] killed by SIGTERM (stopped by the launcher)\n{plan}\nstep 4/4 loss 0.9657\n"
        'Thread 0x00007f (most recent call first):\n  File "/x/runtime/loop.py", line 189 in fit\n'
        + "\n".join(f"  File frame {i}" for i in range(30))
        + "\n[rank 1] exit 1 (first to fail)\n"
        "note: process 1: stopped: another process failed (Connection closed by peer [127.0.0.1]:4)\n"
    )
    message = launch_failure(subprocess.CompletedProcess(["run"], 1, "", output))
    assert "another process failed" not in output[:-4000]  # what the old message left out
    for shown in (
        "[rank 0] killed by SIGTERM",
        'runtime/loop.py", line 189 in fit',
        "step 4/4",
        "[rank 1] exit 1",
    ):
        assert shown in message, message
    assert "Connection closed by peer" in message and len(message) < len(output) // 2, message


def test_two_processes_match_one_with_accumulation(two_processes, tmp_path):
    """2 processes x batch 1 == 1 process x batch 1 x 2 accumulation (effective batch 2 both ways).

    Same optimizer steps; the same batches (process r takes the sampler's batches r, r+2, ...; one process
    takes them in pairs); the same noise (noise_streams = micro_batch seeds each micro-batch from its
    global index); DDP averages the two gradients as accumulation does (each micro-batch's loss / 2).
    Tolerance: gloo's all-reduce sums the two gradients in another order than autograd's accumulation, so
    they differ in the last float32 bits (~1e-7 relative). SGD keeps those differences at their size; Adam
    would not (it divides by sqrt(v): a parameter whose gradient is zero up to rounding, a conv bias before a
    GroupNorm, moves by +-lr on either rounding's sign). rtol 1e-4, atol 1e-6 after 4 steps, while other noise
    moves weights by more than 1e-3 (checked below, so the comparison can fail).
    """
    spec = _spec(tmp_path, batch=1, accumulation=2, streams="micro_batch")
    plan = compile_spec(spec)
    assert (plan.schedule.processes, plan.schedule.noise_streams) == (1, "micro_batch")
    result = execute(plan)
    assert result.status == "finished" and result.steps == STEPS
    one, two = _weights(tmp_path / "out"), _weights(two_processes)
    assert one.keys() == two.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6, msg=key)
    # the two processes filled the caches in halves (each its share of the keys): the very entries one
    # process writes alone
    assert _cache_files(two_processes.parent / "cache") == _cache_files(tmp_path / "cache")
    # the comparison can fail: one process drawing its noise from one generator (noise_streams = process)
    # trains other weights, by far more than the tolerance
    other = _spec(tmp_path / "process", batch=1, accumulation=2, streams="process")
    assert execute(compile_spec(other)).status == "finished"
    apart = _weights(tmp_path / "process" / "out")
    assert max((apart[k] - one[k]).abs().max().item() for k in one) > 1e-3


def test_one_process_killed_stops_all_then_resumes_bit_exact(two_processes, tmp_path):
    """kill -9 of process 0 just after its step-2 checkpoint: process 1, waiting on it at the checkpoint's
    barrier, is ended by the launcher instead of hanging (the launch's timeout, well below gloo's 30-minute
    one, fails the test on a hang); --resume from step 2 then ends with the uninterrupted run's weights."""
    spec = _spec(tmp_path, batch=1, accumulation=1)
    # torchrun's own report of the killed process
    killed = _launch(spec, env={"DBSPEC_KILL_AT": "checkpoint.latest"}, torchrun=True)  # process 0 saves
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or "Signal 9" in killed.stderr, launch_failure(killed)
    assert (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "final").exists()
    resumed = _launch(spec, "--resume")
    assert resumed.returncode == 0, launch_failure(resumed)
    uninterrupted, after_resume = _weights(two_processes), _weights(tmp_path / "out")
    for key, value in uninterrupted.items():
        assert torch.equal(after_resume[key], value), key


def test_two_processes_resume_bit_exact_with_process_streams(tmp_path):
    """Ctrl-C on process 0 after the step-2 checkpoint: both processes stop together at step 3 (checkpoint),
    then --resume finishes; the final weights equal the uninterrupted run's bit for bit. With noise_streams =
    "process" (one generator per process, carried across steps) the checkpoint holds every process's
    generator (before, processes other than the first restarted their stream from the seed).

    The same Ctrl-C with the default streams (micro_batch for two processes) was a test of its own: its stop
    is this one's, and resuming micro_batch streams bit-exact is test_one_process_killed_stops_all_then_...'s
    and test_process_faults.py's (each resumes two processes to the `two_processes` run's weights)."""
    whole = _spec(tmp_path / "whole", batch=1, accumulation=1, streams="process")
    done = _launch(whole)
    assert done.returncode == 0, launch_failure(done)
    spec = _spec(tmp_path / "cut", batch=1, accumulation=1, streams="process")
    stopped = _launch(spec, env={"DBSPEC_KILL_AT": "checkpoint.latest:INT"})
    assert stopped.returncode != 0, launch_failure(stopped)
    assert "interrupted at step 3" in stopped.stderr, launch_failure(stopped)
    assert not (tmp_path / "cut" / "out" / "final").exists()
    resumed = _launch(spec, "--resume")
    assert resumed.returncode == 0, launch_failure(resumed)
    uninterrupted, after_resume = _weights(tmp_path / "whole" / "out"), _weights(tmp_path / "cut" / "out")
    assert uninterrupted.keys() == after_resume.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(after_resume[key], value), key


def test_two_processes_split_class_images_as_one_makes_them(tmp_path):
    """Class images generated by two processes (each every other batch of 2) are the very files one process
    makes, and the manifest lists them all (the next plan generates nothing)."""
    generate = 'path = "generated"\ngenerate = 4\ngenerate_scheduler = "euler"\n'
    generate += "generate_steps = 2\ngenerate_batch = 2"
    folders = {}
    for name in ("two", "one"):
        spec = _spec(tmp_path / name, batch=1, accumulation=1)
        text = spec.read_text().replace("[buckets]", CLASS_DATASET + "\n[buckets]")
        spec.write_text(text.replace('path = "data/class-toy"', generate).replace("steps = 4", "steps = 2"))
        folders[name] = spec.parent / "generated"
        if name == "two":
            done = _launch(spec)
            assert done.returncode == 0, launch_failure(done)
        else:
            assert execute(compile_spec(spec)).status == "finished"
        manifest = json.loads((folders[name] / ".dbspec-generated.json").read_text())
        assert len(manifest["files"]) == 4 and all((folders[name] / f).is_file() for f in manifest["files"])
        replanned = compile_spec(spec, ["output.dir=again"])
        made_now = [d.generate.count for d in replanned.datasets if d.generate]
        assert made_now == [0]  # all four recorded as made
    made = {
        name: {p.name: p.read_bytes() for p in folder.glob("class-*.png")} for name, folder in folders.items()
    }
    assert len(made["one"]) == 4 and made["two"] == made["one"]
