"""The output folder is dbspec's own: never a folder it did not create, one run at a time (real locks, real
processes), clear messages for files and read-only folders, and DBS225 before any run starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.runtime.outdir import LOCK_FILE, RUN_FILE, OutputError, prepare_output

ROOT = Path(__file__).resolve().parents[2]
PLAN_A = ('{"plan_hash": "sha256:a"}\n', "sha256:" + "a" * 64)
PLAN_B = ('{"plan_hash": "sha256:b"}\n', "sha256:" + "b" * 64)


def _claim(out: Path, plan=PLAN_A, **options) -> None:
    options = {"overwrite": False, "resume": False, **options}
    prepare_output(out, *plan, **options).release()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- never touch what dbspec did not create -----------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        {"dog.png": b"\x89PNG", "dog.txt": b"a dog"},  # a dataset folder
        {"spec.toml": b"spec_version = 2\n", "data/x.png": b"x"},  # a project folder
        {"final/unet.bin": b"w"},  # results, but no run marker
        {RUN_FILE: b"not json", "notes.txt": b"mine"},  # a run.json dbspec did not write
    ],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_non_empty_folder_without_the_run_marker_is_refused_and_left_alone(tmp_path, content, overwrite):
    out = tmp_path / "folder"
    for name, data in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = _tree(out)
    with pytest.raises(OutputError, match=f"output.dir {out} is not empty .* choose another output folder"):
        _claim(out, overwrite=overwrite)
    assert _tree(out) == before and not (out / LOCK_FILE).exists()  # nothing written, nothing moved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_the_root_folder_is_refused_not_an_internal_error():
    with pytest.raises(OutputError, match="output.dir / is not empty"):
        _claim(Path("/"), overwrite=True)


def test_an_empty_folder_and_a_missing_one_are_used(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "nested"):
        _claim(out)
        assert json.loads((out / RUN_FILE).read_text())["run_hash"] == PLAN_A[1]


def test_overwrite_moves_aside_only_a_marked_run(tmp_path):
    out = tmp_path / "run"
    _claim(out)
    (out / "final").mkdir()
    _claim(out, PLAN_B, overwrite=True)
    (old,) = tmp_path.glob("run.old-*")
    assert json.loads((old / RUN_FILE).read_text())["run_hash"] == PLAN_A[1] and (old / "final").is_dir()


def test_an_output_path_that_is_a_file_gets_its_own_message(tmp_path):
    out = tmp_path / "out"
    out.write_text("notes")
    with pytest.raises(OutputError, match=f"output.dir {out} is a file, not a folder"):
        _claim(out, overwrite=True)
    assert out.read_text() == "notes"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "",
            "the output folder {out} is not writable (Permission denied): make it writable or "
            "choose another output.dir",
        ),
        ("new", "cannot create the output folder {out}: Permission denied"),
    ],
)
def test_a_read_only_output_folder_gets_its_own_message(name, expected):
    with (
        tempfile.TemporaryDirectory() as top
    ):  # directly under /tmp: a child running as `nobody` can reach it
        os.chmod(top, 0o755)
        read_only = Path(top) / "read-only"
        read_only.mkdir(mode=0o555)
        out = read_only / name if name else read_only
        try:
            message = _claim_in_child(out)
        finally:
            read_only.chmod(0o755)
    assert message == expected.format(out=out)


def _claim_in_child(out: Path) -> str:
    """The OutputError message of a claim made by a forked child; as root the child first becomes `nobody`:
    root writes anywhere."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the message through the pipe, never return into pytest
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            _claim(out)
            os.write(write, b"claimed")
        except OutputError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


# --- one run per output folder ------------------------------------------------------------------------------
def test_a_second_claim_fails_at_once_naming_the_folder_and_the_pid(tmp_path):
    out = tmp_path / "run"
    with prepare_output(out, *PLAN_A, overwrite=False, resume=False):
        # flock belongs to the open file description: a second open + flock conflicts in this process too.
        for options in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(
                OutputError,
                match=f"the output folder {out} is in use by another dbspec run \\(pid {os.getpid()}\\)",
            ):
                _claim(out, **options)
    _claim(out)  # released when the run ended
    assert not list(tmp_path.glob("run.old-*"))


def test_a_live_process_holds_the_folder_and_a_killed_one_does_not(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom dbspec.runtime.outdir import prepare_output\n"
        f"lock = prepare_output(Path({str(out)!r}), '{{}}', {PLAN_A[1]!r}, overwrite=False, resume=False)\n"
        "print('locked', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"in use by another dbspec run \\(pid {holder.pid}\\)"):
            _claim(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / LOCK_FILE).read_text().strip() == str(
        holder.pid
    )  # the stale file stays, and does not block
    _claim(out)


def test_dbspec_run_on_a_folder_in_use_fails_before_loading_anything(tmp_path):
    from dbspec.runtime.execute import RunError, execute
    from tests.runtime.runspec import make_plan

    plan = make_plan(tmp_path, steps=1)
    with (
        prepare_output(Path(plan.checkpoints.dir), *PLAN_A, overwrite=False, resume=False),
        pytest.raises(RunError) as info,
    ):
        execute(plan)
    assert f"is in use by another dbspec run (pid {os.getpid()})" in info.value.message
    line = (tmp_path / "spec.toml").read_text().splitlines().index('dir = "out"') + 1
    assert info.value.where.startswith(f"{tmp_path / 'spec.toml'}:{line}:")  # output.dir
    assert not (Path(plan.checkpoints.dir) / "checkpoints").exists()


# --- DBS225: caught before the run --------------------------------------------------------------------------
def test_run_into_the_spec_folder_is_refused_before_anything_is_written(tmp_path):
    from tests.runtime.runspec import write_spec

    spec = write_spec(tmp_path, steps=1)
    before = _tree(tmp_path)
    result = CliRunner().invoke(app, ["run", str(spec), "--set", "output.dir=.", "--overwrite"])
    assert result.exit_code == 1, result.output
    assert (
        'error[DBS225]: output.dir "." overlaps the run\'s inputs: it contains the spec file spec.toml, '
        'contains datasets[0].path "data/toy", contains cache.dir "cache"' in result.output
    )
    assert _tree(tmp_path) == before
