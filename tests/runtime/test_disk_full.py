"""A full disk mid-run: a clear error naming the folder, the last good checkpoint intact, and the next run
resumes. The disk fills by a file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as ENOSPC would;
Python ignores SIGXFSZ), set in this process around the run only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import RunError, execute
from tests.runtime.runspec import compile_spec, file_size_limit, write_spec

EXTRA = """
[adapter]
kind = "lora"
rank = 2

[checkpoints]
every = 2
keep = 1

[logging]
tensorboard = false
"""


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_run_resumes(tmp_path):
    spec = write_spec(tmp_path, steps=6, extra=EXTRA)
    plan = compile_spec(spec)
    out = Path(plan.checkpoints.dir)
    assert execute(plan, stop_after=2).status == "interrupted"
    state = out / "checkpoints" / "step-000002" / "training_state.pt"
    # report.html is left out: written after the last checkpoint, failing to write it is only a note.
    others = max(
        p.stat().st_size
        for p in out.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and p.name != "report.html"
    )
    assert others < state.stat().st_size // 2, "the limit must stop the checkpoint and nothing else"
    with file_size_limit(state.stat().st_size // 2), pytest.raises(RunError) as info:
        execute(plan, resume=True)
    message = info.value.message
    assert f"cannot write checkpoint step-000004 into {out / 'checkpoints'}" in message, message
    assert "the write failed, usually a full disk" in message and "MiB free there" in message
    assert f"{out / 'checkpoints' / 'step-000002'}, is intact" in message and "--resume" in message
    assert info.value.where.startswith(str(spec))  # the spec line of output.dir
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000002"]

    assert execute(plan, resume=True).status == "finished"  # room again: it goes on from step 2
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = compile_spec(write_spec(reference_dir, steps=6, extra=EXTRA))
    assert execute(reference).status == "finished"
    mine, theirs = (
        load_file(Path(p.checkpoints.dir) / "final" / "pytorch_lora_weights.safetensors")
        for p in (plan, reference)
    )
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
