"""FSDP2 (`distributed.strategy = "fsdp"`) with two real processes on this CPU through torchrun (gloo).

accelerate turns FSDP on for GPU processes only; dbspec switches its CPU state to FSDP
(runtime/distributed.py), so these runs shard the tiny model's weights, gradients and optimizer state across
the two processes as GPUs would, with gloo doing the all-gathers and reduce-scatters. Checked: equal to one
process with accumulation 2 (as DDP is, tests/runtime/test_processes.py), checkpoints in DDP's whole format,
and bit-exact resume. Launches cost 40-60 s each on this machine, so they are few.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dbspec.runtime.checkpoints import latest_checkpoint, load_state
from dbspec.runtime.execute import execute
from tests.runtime.forked import launch_failure
from tests.runtime.shared import once_per_session
from tests.runtime.runspec import compile_spec
from tests.runtime.test_processes import STEPS, _launch, _spec, _weights

pytestmark = pytest.mark.slow

FSDP = '\n[distributed]\nstrategy = "fsdp"\n'
LORA = '\n[adapter]\nkind = "lora"\nrank = 2\n'


def _fsdp_spec(tmp: Path, *, accumulation: int = 1, fsdp: bool = True, lora: bool = False, **kw) -> Path:
    """test_processes' spec (SGD, batch 1, checkpoints every 2), with momentum (optimizer state to shard and
    restore), FSDP and optionally LoRA."""
    path = _spec(tmp, batch=1, accumulation=accumulation, **kw)
    text = path.read_text().replace('kind = "sgd"', 'kind = "sgd"\nmomentum = 0.9')
    path.write_text(text + (FSDP if fsdp else "") + (LORA if lora else ""))
    return path


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted two-process FSDP run (launched once per session, tests/runtime/shared.py): its output
    folder and output."""

    def make(folder: Path) -> None:
        done = _launch(_fsdp_spec(folder))
        assert done.returncode == 0, launch_failure(done)
        (folder / "launch-output.txt").write_text(done.stdout + done.stderr)

    folder = once_per_session(tmp_path_factory, "fsdp-run", make)
    return folder / "out", (folder / "launch-output.txt").read_text()


def _one_process(tmp: Path, **kw) -> Path:
    """One process, batch 1 x accumulation 2, noise seeded per micro-batch: what two processes compute."""
    spec = _fsdp_spec(tmp, accumulation=2, fsdp=False, streams="micro_batch", **kw)
    result = execute(compile_spec(spec))
    assert result.status == "finished" and result.steps == STEPS
    return tmp / "out"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """`_one_process` of the FSDP run's spec, made once for the tests that compare with it: its output."""
    return once_per_session(tmp_path_factory, "fsdp-one-process", _one_process) / "out"


def test_fsdp_shards_and_matches_one_process(fsdp_run, one_process):
    """2 FSDP processes x batch 1 == 1 process x batch 1 x 2 accumulation (as DDP, test_processes).

    FSDP's reduce-scatter averages the two gradients as DDP's all-reduce does; gloo sums them in another order
    than autograd's accumulation, so weights differ in the last float32 bits: rtol 1e-4, atol 1e-6 after 4
    SGD-with-momentum steps (linear in the gradients, so rounding stays at its size), while training moves
    weights by more than 1e-3 (checked)."""
    out, output = fsdp_run
    assert "FSDP shards unet across 2 process(es)" in output  # not silently DDP
    one = _weights(one_process)
    two = _weights(out)
    assert one.keys() == two.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6, msg=key)
    base = _weights_at_start(one_process.parent / "spec.toml")
    moved = max((one[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-3


def _weights_at_start(spec: Path) -> dict[str, torch.Tensor]:
    """The unet weights the run of `spec` (a full fine-tune, already run) started from, keyed as `_weights`
    keys its final ones: the built-in model's folder that run loaded (plan.model.path). Was a run of its own
    at a learning rate of 1e-12 (the start to float precision); the folder is the start itself."""
    from safetensors.torch import load_file

    folder = Path(compile_spec(spec).model.path)
    files = sorted((folder / "unet").glob("*.safetensors"))
    assert files, f"no unet weights under {folder}"
    return {f"final/unet/{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def test_fsdp_checkpoint_holds_whole_state_as_ddp(fsdp_run, one_process):
    """The latest checkpoint of the FSDP run holds whole weights and optimizer state in the format one process
    (and so DDP) writes: the same keys and shapes, momentum buffers shaped like their parameters."""
    out, _ = fsdp_run
    sharded = load_state(latest_checkpoint(out))
    whole = load_state(latest_checkpoint(one_process))
    assert sharded["trainable"].keys() == whole["trainable"].keys()
    for key, value in whole["trainable"].items():
        assert sharded["trainable"][key].shape == value.shape, key
    assert sharded["optimizer"]["param_groups"] == whole["optimizer"]["param_groups"]
    assert sharded["optimizer"]["state"].keys() == whole["optimizer"]["state"].keys()
    for index, per_param in whole["optimizer"]["state"].items():
        got = sharded["optimizer"]["state"][index]["momentum_buffer"]
        assert type(got) is torch.Tensor and got.shape == per_param["momentum_buffer"].shape


def test_fsdp_resume_bit_exact(fsdp_run, tmp_path):
    """Ctrl-C on process 0 after the step-2 checkpoint: both stop at step 3 with a checkpoint; --resume loads
    the whole state into each process's shards and ends with the uninterrupted run's weights, bit for bit."""
    spec = _fsdp_spec(tmp_path)
    stopped = _launch(spec, env={"DBSPEC_KILL_AT": "checkpoint.latest:INT"})
    assert stopped.returncode != 0, launch_failure(stopped)
    assert "interrupted at step 3" in stopped.stderr, launch_failure(stopped)
    resumed = _launch(spec, "--resume")
    assert resumed.returncode == 0, launch_failure(resumed)
    uninterrupted, after_resume = _weights(fsdp_run[0]), _weights(tmp_path / "out")
    assert uninterrupted.keys() == after_resume.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(after_resume[key], value), key


def test_fsdp_lora_matches_one_process(tmp_path):
    """LoRA under FSDP2 (frozen base and trained adapters in one shard unit; FSDP2 needs no use_orig_params):
    trains, writes the diffusers LoRA file, and equals one process with accumulation 2 (same tolerance)."""
    spec = _fsdp_spec(tmp_path / "two", lora=True)
    done = _launch(spec)
    assert done.returncode == 0, launch_failure(done)
    two = _weights(tmp_path / "two" / "out")
    one = _weights(_one_process(tmp_path / "one", lora=True))
    assert one.keys() == two.keys() and any("lora" in k for k in one)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6, msg=key)
