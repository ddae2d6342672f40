"""The output folder belongs to one dbspec run: a run marker says it is dbspec's, a lock keeps it to one run.

dbspec writes only into a folder that is missing, empty, or marked by `run.json` (written when a run
claims the folder), and `--overwrite` moves aside only such a marked folder: a dataset, a project or `/`
given as output.dir is never written into or moved. `.dbspec.lock` carries an exclusive flock for the whole
run; the kernel drops it when the process dies, so a crashed run never blocks the next one.

No torch here: the CLI's tests exercise these rules in processes that never load a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from dbspec.runtime import faults
from dbspec.util.atomic import write_text_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; one run per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"  # {"run_hash": ...}: what the run trains, without machine-specific plan fields
LOCK_FILE = ".dbspec.lock"  # holds the pid of the run that has the folder
STEP_DIR = re.compile(r"^step-(\d{6,})$")
FINAL_DIR = "final"
# What dbspec writes before renaming into place (`.x.tmp`, `.x.tmp-<pid>`, `.tmp-step-...`) or deletes after
# renaming away (`.trash-...`): under the folder's lock any such entry is a dead run's.
_TEMPORARY = re.compile(r"^\.(?:.+\.tmp(?:-\d+)?|tmp-step-.+|trash-.+)$")


class OutputError(Exception):
    """The output folder holds something this run must not write over, or cannot be written."""


class OutputLock:
    """An exclusive flock on `<out>/.dbspec.lock` (holding this pid) until `release()` or the `with` ends.

    flock belongs to the open file description: a second open + flock conflicts even in the same process.
    The file is never deleted: unlinking a lock file races with a process that just opened it.
    """

    def __init__(self, out: Path):
        self.out = out
        self._fd: int | None = _lock(out)
        self.recovered: list[str] = []  # what `recover` did when the run claimed the folder

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def prepare_output(
    out: Path, plan_json: str, plan_hash: str, *, overwrite: bool, resume: bool, legacy: tuple[str, ...] = ()
) -> OutputLock:
    """Claim `out` for this plan's run and lock it; release the returned lock when the run ends.

    Refuses (OutputError) a file, a non-empty folder without dbspec's run marker, a folder another run holds,
    and mixing runs: `overwrite` moves a marked run aside to `<out>.old-<timestamp>` (nothing is deleted);
    `resume` keeps a run of the same plan so the loop can continue from its latest checkpoint. `legacy`: the
    hashes the same run had under older plan versions (plan.io.legacy_run_hashes); such a run is this one.
    """
    out = Path(out)
    _refuse_foreign(out)
    lock = _create_and_lock(out)
    try:
        lock.recovered = recover(out)
        held = _run_hash(out)
        held = plan_hash if held in legacy else held  # saved by an older dbspec: run.json is rewritten below
        if held is not None and (held != plan_hash or not resume) and _has_results(out, held == plan_hash):
            if not overwrite:
                raise OutputError(_refusal(out, held, plan_hash, resume))
            _move_aside(out)  # under the old folder's lock: no other run can claim it meanwhile
            lock.release()
            lock = _create_and_lock(out)
        if _run_hash(out) != plan_hash:
            write_text_atomic(out / "plan.json", plan_json)
            write_text_atomic(out / RUN_FILE, json.dumps({"run_hash": plan_hash}) + "\n")
        faults.reached("output.claimed")
    except BaseException:
        lock.release()
        raise
    return lock


def _refuse_foreign(out: Path) -> None:
    """A file, or a folder with content that dbspec did not mark as a run, is not ours to write into."""
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"output.dir {out} is a file, not a folder: choose a folder path (dbspec creates it)"
        )
    if not out.is_dir() or _run_hash(out) is not None:
        return
    try:
        found = sorted(entry.name for entry in out.iterdir() if entry.name != LOCK_FILE)
    except OSError as exc:
        raise OutputError(f"cannot read the output folder {out}: {exc.strerror or exc}") from None
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        marker = (
            f"its {RUN_FILE} is not dbspec's run marker"
            if RUN_FILE in found
            else f"no run marker ({RUN_FILE})"
        )
        raise OutputError(
            f"output.dir {out} is not empty ({shown}) and holds {marker}: dbspec writes only into "
            "a new or empty folder or one of its own runs, and --overwrite moves aside only its own "
            "runs; choose another output folder"
        )


def _create_and_lock(out: Path) -> OutputLock:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    return OutputLock(out)


def _lock(out: Path) -> int | None:
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(
            f"the output folder {out} is not writable ({exc.strerror or exc}): make it writable "
            "or choose another output.dir"
        ) from None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise OutputError(
            f"the output folder {out} is in use by another dbspec run (pid {holder}): one run per "
            "output folder; wait for it to end, or choose another output.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _run_hash(out: Path) -> str | None:
    """The run hash of dbspec's run marker in `out`, or None when there is no readable marker."""
    try:
        data = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stated = data.get("run_hash") if isinstance(data, dict) else None  # noqa: SIM401 - file data, not config
    return stated if isinstance(stated, str) and stated else None


def _has_results(out: Path, same_plan: bool) -> bool:
    # Another plan's folder is always a run; the same plan's only once it saved something worth keeping.
    checkpoints = out / "checkpoints"
    steps = checkpoints.is_dir() and any(STEP_DIR.match(entry.name) for entry in checkpoints.iterdir())
    return not same_plan or steps or (out / "final").exists()


def _refusal(out: Path, held: str, plan_hash: str, resume: bool) -> str:
    aside = f"--overwrite (moves the old run aside to {out.name}.old-<timestamp>; nothing is deleted)"
    if held == plan_hash:
        return f"{out} already holds checkpoints of this plan: pass --resume to continue it, or {aside}"
    cannot = "it cannot be resumed with this plan; " if resume else ""
    return f"{out} holds another plan ({held[:19]}…): {cannot}choose another output folder, or pass {aside}"


def _move_aside(out: Path) -> Path:
    if out.parent == out:
        raise OutputError(
            f"{out} is a filesystem root; it cannot be moved aside: choose another output folder"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out.with_name(f"{out.name}.old-{stamp}")
    suffix = 1
    while target.exists():
        target = out.with_name(f"{out.name}.old-{stamp}-{suffix}")
        suffix += 1
    os.replace(out, target)
    return target


def recover(out: Path) -> list[str]:
    """Tidy what killed runs left, holding the folder's lock (so no live process writes here): put back a
    finished model that a kill left renamed aside, and delete half-written temporaries. Says what it did."""
    done = []
    final = out / FINAL_DIR
    for aside in sorted(out.glob(f".{FINAL_DIR}.old-*")):
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
            done.append(f"put back {final}, which a killed run had moved aside to replace it")
    stale = [path for path in _walk_hidden(out) if _TEMPORARY.match(path.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if stale:
        done.append(f"deleted {len(stale)} temporary file(s) or folder(s) left by a killed run")
    return done


def _walk_hidden(out: Path) -> list[Path]:
    """Hidden entries anywhere under `out` (links not followed), without descending into them."""
    found, pending = [], [out]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name != LOCK_FILE:
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return found


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target` without ever deleting a complete `target` before its
    replacement is in place: the old one is renamed aside first and deleted last (a kill in between leaves it
    for `recover` to put back)."""
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, aside)
        faults.reached("final.old_aside")
    os.replace(staging, target)
    fsync_dir(target.parent)
    faults.reached("final.renamed")
    shutil.rmtree(aside, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make renames inside `folder` durable (a no-op where folders cannot be opened: Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
