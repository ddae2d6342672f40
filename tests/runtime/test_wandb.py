"""Weights & Biases logging (`[logging] wandb`) with the real wandb client, offline: the run's W&B history
holds the values metrics.jsonl and TensorBoard hold, at the same steps; a resume continues the W&B run."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from dbspec.plan.model import LoggingPlan
from dbspec.runtime.execute import RunError, execute
from dbspec.runtime.logs import MetricsLog
from dbspec.runtime.wandb_log import RUN_FILE, WandbSink
from tests.runtime.runspec import compile_spec, summary_text, write_spec

wandb = pytest.importorskip("wandb")

SPEC = """
[adapter]
kind = "lora"
rank = 2

[validation]
prompts = ["a photo of ohwx toy"]
every = 4
steps = 2

[logging]
every = 1
wandb = true
wandb_project = "dbspec-tests"
"""


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """wandb offline, every folder it writes under tmp_path (no network here, no user settings read)."""
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def wandb_records(path: Path):
    """The protobuf records of a run-<id>.wandb file: W&B's transaction log (LevelDB's log format: 32 KiB
    blocks of chunks, each with a 7-byte header: CRC, length, kind), after its 7-byte ":W&B" header.
    wandb >= 0.2x ships no Python reader of its own (wandb-core, in Go, writes and reads these files)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def finished_records(path: Path, wait_s: float = 60.0) -> list:
    """The records of a finished run's file. wandb-core (its own process) may still be writing the file when
    `finish()` has returned (seen on a loaded machine: the header alone), so wait for the run's `exit`
    record, which it writes last."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            records = list(wandb_records(path))
        except (DecodeError, struct.error):  # a chunk still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history(path: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            rows.setdefault(row["_step"], {}).update(row)
    return rows


def run_record(path: Path):
    return next(r.run for r in finished_records(path) if r.WhichOneof("record_type") == "run")


def test_a_run_logs_to_wandb_what_it_logs_to_tensorboard_and_a_resume_continues_the_run(offline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plan = compile_spec(write_spec(offline, steps=4, extra=SPEC))
    assert plan.logging.wandb and plan.logging.wandb_run_name == "out"  # the output folder's name
    assert "project dbspec-tests, run 'out': metrics every 1 steps" in summary_text(plan)
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted"
    out = Path(plan.checkpoints.dir)
    run_id = json.loads((out / RUN_FILE).read_text())["id"]
    second = execute(plan, resume=True)
    assert second.status == "finished"

    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # one W&B run, continued
    runs = [run_record(f) for f in files]
    assert {r.run_id for r in runs} == {run_id} and {r.project for r in runs} == {"dbspec-tests"}
    assert runs[0].display_name == "out"
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["schedule"]["total_steps"] == 4 and config["logging"]["wandb_project"] == "dbspec-tests"

    logged: dict[int, dict] = {}
    for f in files:
        logged.update(history(f))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert sorted(logged) == [1, 2, 3, 4]
    for row in rows:
        for key in ("loss", "lr", "epoch"):
            assert logged[row["step"]][f"train/{key}"] == pytest.approx(row[key], rel=1e-12, abs=0)
    events = EventAccumulator(str(out / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train/loss")}
    assert tb.keys() == logged.keys()
    assert all(tb[s] == pytest.approx(logged[s]["train/loss"], rel=1e-6) for s in tb)  # TB stores float32
    grid = (out / "samples" / "step-000004" / "grid.png").read_bytes()  # the validation grid, at its step
    assert logged[4]["validation/_type"] == "image-file"
    assert logged[4]["validation/sha256"] == hashlib.sha256(grid).hexdigest()


def test_only_the_main_process_opens_a_wandb_run(offline):
    plan = LoggingPlan(every=1, tensorboard=False, wandb=True, wandb_project="p", wandb_run_name="r")
    log = MetricsLog(offline / "out", plan, start_step=0, enabled=False)  # another process's log
    log.write(1, {"loss": 1.0})
    log.close()
    assert not (offline / "out").exists()


def test_a_run_without_wandb_installed_stops_before_it_starts(offline, monkeypatch):
    plan = compile_spec(write_spec(offline, steps=4, extra=SPEC))
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own way to make a package unimportable
    with pytest.raises(RunError, match="DBS379.*pip install wandb") as info:
        execute(plan)
    where = plan.origins["logging.wandb"].where
    assert where.startswith(str(offline / "spec.toml")) and info.value.where == where  # the spec's wandb line
    assert not (offline / "out").exists()  # nothing started


def test_a_run_left_open_in_the_process_is_finished_not_reused(offline):
    """A run that raised never closed its sink; the next run in the same process gets its own W&B run."""
    plan = LoggingPlan(every=1, tensorboard=False, wandb=True, wandb_project="p", wandb_run_name="r")
    first = WandbSink(offline / "a", plan, {})
    second = WandbSink(offline / "b", plan, {})
    second.close()
    assert first.run_id != second.run_id
    assert [f.name for f in (offline / "b" / "wandb").glob("offline-run-*/run-*.wandb")] == [
        f"run-{second.run_id}.wandb"
    ]


@pytest.mark.slow
def test_two_processes_log_one_wandb_run_from_the_main_process(offline):
    """torchrun with two processes: one W&B run (the main process's), holding metrics.jsonl's losses."""
    from tests.runtime.test_processes import _launch

    spec = write_spec(offline, steps=2, extra="[logging]\nevery = 1\nwandb = true\n")
    done = _launch(spec)  # the processes inherit the offline WANDB_* settings
    assert done.returncode == 0, done.stderr[-3000:]
    out = offline / "out"
    files = list((out / "wandb").glob("*run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].name == f"run-{json.loads((out / RUN_FILE).read_text())['id']}.wandb"
    logged = history(files[0])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["loss"] for r in rows} == {s: v["train/loss"] for s, v in logged.items()}
