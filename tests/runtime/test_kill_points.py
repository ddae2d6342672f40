"""kill -9 at every named write point (runtime/faults.py), then --resume: the final weights equal an
uninterrupted run's bit for bit, no temporary is left behind, and a finished model is never lost.

Each kill runs `dbspec run` in a real process that SIGKILLs itself at the point (no cleanup runs), forked
from a server that imported the runtime once (tests/runtime/forked.py); the resume runs in this process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.faults import ENV
from dbspec.runtime.outdir import _TEMPORARY, recover
from tests.runtime.forked import run_cli
from tests.runtime.runspec import ROOT, compile_spec, write_spec
from tests.runtime.shared import once_per_session

pytestmark = pytest.mark.slow

EXTRA = """
[adapter]
kind = "lora"
rank = 2

[train]
text_encoder = true

[checkpoints]
every = 2
keep = 1
"""
LORA = "final/pytorch_lora_weights.safetensors"
# (point, arrival): every write of the output folder and the caches, in the order a run reaches them.
POINTS = [
    "output.claimed",
    "cache.entry@3",
    "checkpoint.weights",
    "checkpoint.state",
    "checkpoint.renamed",
    "checkpoint.latest",
    "checkpoint.weights@2",
    "checkpoint.latest@2",
    "final.staged",
    "final.renamed",
]


def spec_in(folder: Path) -> Path:
    return write_spec(folder, steps=4, extra=EXTRA)


def _uninterrupted(folder: Path) -> None:
    assert execute(compile_spec(spec_in(folder))).status == "finished"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's LoRA weights (run once per session, not once per test worker)."""
    return load_file(
        once_per_session(tmp_path_factory, "kill-points-reference", _uninterrupted) / "out" / LORA
    )


def kill_at(spec: Path, point: str, *args: str) -> None:
    env = {**os.environ, ENV: point, "HF_HUB_OFFLINE": "1"}
    code, output = run_cli(["run", str(spec), *args], env=env, cwd=ROOT, timeout=600)
    assert code == -signal.SIGKILL, f"{point} was never reached (exit code {code}):\n{output}"


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if _TEMPORARY.match(p.name))


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_a_write_point_resumes_to_the_same_weights(tmp_path, point, reference):
    spec = spec_in(tmp_path)
    kill_at(spec, point)
    result = execute(compile_spec(spec), resume=True)
    assert result.status == "finished"
    final = load_file(tmp_path / "out" / LORA)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[key], reference[key]) for key in reference), point
    assert leftovers(tmp_path / "out") == []


def test_killed_while_pruning_resume_state_resumes_to_the_same_weights(tmp_path, reference):
    """checkpoints.keep_state: a kill right after an older checkpoint lost its training state; the resume
    takes the newest checkpoint that still has it and ends at the uninterrupted run's weights."""
    spec = write_spec(
        tmp_path, steps=4, extra=EXTRA.replace("every = 2\nkeep = 1", "every = 1\nkeep = 3\nkeep_state = 1")
    )
    kill_at(spec, "checkpoint.state_pruned")
    result = execute(compile_spec(spec), resume=True)
    assert result.status == "finished"
    final = load_file(tmp_path / "out" / LORA)
    assert all(torch.equal(final[key], reference[key]) for key in reference)
    assert leftovers(tmp_path / "out") == []


def test_a_kill_while_replacing_a_finished_model_loses_nothing(tmp_path, reference):
    spec = spec_in(tmp_path)
    assert execute(compile_spec(spec)).status == "finished"
    kill_at(spec, "final.old_aside", "--resume")  # rewriting final: the old one is renamed aside, then killed
    out = tmp_path / "out"
    assert not (out / "final").exists() and list(out.glob(".final.old-*"))
    assert recover(out)[0].startswith("put back")
    restored = load_file(out / LORA)
    assert all(torch.equal(restored[key], reference[key]) for key in reference)
    assert execute(compile_spec(spec), resume=True).status == "finished"
    assert leftovers(out) == []


@pytest.mark.parametrize("sent", ["INT", "TERM"])
def test_ctrl_c_or_sigterm_during_the_final_save_lets_it_finish(tmp_path, monkeypatch, reference, sent):
    monkeypatch.setenv(ENV, f"final.staged:{sent}")  # delivered to this process, in the middle of the save
    result = execute(compile_spec(spec_in(tmp_path)))
    assert result.status == "finished"
    final = load_file(tmp_path / "out" / LORA)
    assert all(torch.equal(final[key], reference[key]) for key in reference)
    assert leftovers(tmp_path / "out") == []
