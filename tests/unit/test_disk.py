"""DBS351: what a run writes, against the free disk at its own folders (output.dir,
cache.dir), on real folders.

A second device comes from /dev/shm (tmpfs) where the machine has one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from PIL import Image

from dbspec.compiler.disk import DiskNeed, FreeDisk, free_disk, shortfalls
from dbspec.compiler.target import parse_target
from dbspec.frontend import plan_spec
from dbspec.plan.io import run_hash
from dbspec.plan.model import TargetEnv

HERE = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=True, measure_disk=True)  # as probe_target() says
SHM = Path("/dev/shm")
GIB = 2**30


def _other_device(tmp_path: Path) -> Path | None:
    if SHM.is_dir() and os.access(SHM, os.W_OK) and os.stat(SHM).st_dev != os.stat(tmp_path).st_dev:
        return SHM
    return None


@pytest.fixture
def shm(tmp_path: Path):
    """A fresh folder on another device than tmp_path (skips where there is none), removed afterwards."""
    other = _other_device(tmp_path)
    if other is None:
        pytest.skip("no tmpfs /dev/shm on another device here")
    folder = other / f"dbspec-test-{uuid.uuid4().hex}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_spec(
    folder: Path, *, output: Path | str = "out", cache: Path | str = "cache", steps: int = 10
) -> Path:
    """Three 64x64 images and a full fine-tune of the built-in tiny model, checkpointing every step."""
    (folder / "imgs").mkdir(exist_ok=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(folder / "imgs" / f"{i}.png")
    spec = folder / "spec.toml"
    spec.write_text(
        'spec_version = 2\n[model]\nbase = "builtin:tiny-sd1"\n[[datasets]]\nname = "a"\npath = "imgs"\n'
        f'prompt = "x"\nresolution = 64\n[buckets]\nstep = 16\n[schedule]\nsteps = {steps}\n'
        f'[checkpoints]\nevery = 1\nkeep = 0\n[output]\ndir = "{output}"\n[cache]\ndir = "{cache}"\n'
    )
    return spec


def disk_warnings(planned) -> list:
    return [d for d in planned.diagnostics if d.code == "DBS351"]


# 10 million kept checkpoints of even the tiny model outgrow any disk.
HUGE = 10_000_000


def test_free_disk_is_measured_at_the_output_and_cache_folders_each_on_its_own_device(tmp_path, shm):
    spec = write_spec(tmp_path, output=tmp_path / "runs" / "not" / "made", cache=shm / "cache" / "new")
    planned = plan_spec(spec, HERE)
    assert planned.plan is not None and not disk_warnings(planned)
    target = planned.plan.target
    assert not target.shared_disk
    # Free space moves as other jobs write: compare loosely, but far closer than the two devices' difference.
    assert abs(target.free_disk_bytes - shutil.disk_usage(tmp_path).free) < 256 * 2**20
    assert abs(target.cache_free_disk_bytes - shutil.disk_usage(shm).free) < 256 * 2**20


def test_output_and_cache_on_one_device_are_one_measure(tmp_path):
    planned = plan_spec(write_spec(tmp_path), HERE)
    target = planned.plan.target
    assert target.shared_disk and target.free_disk_bytes > 0 and target.cache_free_disk_bytes > 0


def test_the_warning_names_the_output_folder_the_bytes_needed_and_free(tmp_path, shm):
    """The spec's folder has room (it is on tmp_path's disk with the cache); the output disk lacks it."""
    out = shm / "runs" / "a"
    spec = write_spec(tmp_path, output=out, steps=HUGE)
    (warning,) = disk_warnings(plan_spec(spec, HERE))
    assert warning.severity == "warning" and warning.path == "output.dir"
    assert f"`{shm.resolve()}` has" in warning.message  # the nearest existing folder of output.dir
    assert (
        "to output.dir (checkpoints and final weights)" in warning.message
        and "cache.dir" not in warning.message
    )
    assert "GiB free" in warning.message
    assert "lower checkpoints.keep" in warning.help


def test_one_device_holding_both_folders_adds_their_needs(tmp_path):
    (warning,) = disk_warnings(plan_spec(write_spec(tmp_path, steps=HUGE), HERE))
    assert "to output.dir" in warning.message and "to cache.dir (latent cache)" in warning.message
    assert "on one disk" in warning.message and f"`{tmp_path.resolve()}` has" in warning.message


def test_a_target_for_another_machine_measures_nothing(tmp_path):
    planned = plan_spec(write_spec(tmp_path, steps=HUGE), parse_target("cpu:8GB"))
    assert planned.plan is not None and not disk_warnings(planned)
    assert planned.plan.target.free_disk_bytes == 0 and planned.plan.target.cache_free_disk_bytes == 0


def test_what_was_measured_is_not_part_of_the_run_hash(tmp_path):
    """A run planned here resumes from a plan made with --target (and the free disk changes between plans)."""
    spec = write_spec(tmp_path)
    here, there = plan_spec(spec, HERE).plan, plan_spec(spec, parse_target("cpu:8GB")).plan
    assert here.target.free_disk_bytes and not there.target.free_disk_bytes
    assert run_hash(here) == run_hash(there)


def _free(device: int, free: int) -> FreeDisk:
    return FreeDisk(folder=Path(f"/disk{device}"), device=device, free=free)


def test_shortfalls_per_device():
    need = DiskNeed(output=6 * GIB, cache=6 * GIB)
    assert shortfalls(need, _free(1, 10 * GIB), _free(2, 10 * GIB)) == []  # two disks, each has room
    (both,) = shortfalls(need, _free(1, 10 * GIB), _free(1, 10 * GIB))  # one disk: 12 GiB > 10 GiB
    assert both.keys == ("output.dir", "cache.dir") and both.needed == 12 * GIB
    (cache,) = shortfalls(need, _free(1, 10 * GIB), _free(2, 5 * GIB))
    assert cache.keys == ("cache.dir",) and cache.folder == Path("/disk2") and cache.free == 5 * GIB
    assert shortfalls(need, None, None) == []  # unknown: nothing to compare


def test_free_disk_of_a_missing_folder_is_its_nearest_existing_parent(tmp_path):
    measured = free_disk(tmp_path / "a" / "b" / "c")
    assert measured.folder == tmp_path.resolve() and measured.device == os.stat(tmp_path).st_dev
    assert measured.free > 0


def test_keep_state_counts_the_training_state_of_the_newest_checkpoints_only(tmp_path):
    from dbspec.compiler.disk import disk_needed

    plan = plan_spec(write_spec(tmp_path, steps=10), HERE).plan  # 10 checkpoints, all kept
    assert plan is not None and len(plan.schedule.checkpoint_steps) == 10

    def need(keep: int, keep_state: int) -> int:
        return disk_needed(
            precision=plan.precision,
            memory=plan.memory,
            schedule=plan.schedule,
            keep=keep,
            keep_state=keep_state,
            save_precision="fp32",
            lora=False,
            datasets=plan.datasets,
            cache=plan.cache,
        ).output

    state = plan.memory.gradients + plan.memory.optimizer  # one checkpoint's training_state.pt, estimated
    assert state > 0
    assert need(0, 0) - need(0, 3) == 7 * state  # 10 kept, 3 with their state
    assert need(4, 0) - need(4, 1) == 3 * state
    assert need(4, 4) == need(4, 9) == need(4, 0)  # at least every kept one: all keep it
