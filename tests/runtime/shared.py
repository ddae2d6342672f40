"""Reference runs made once per test session, however many pytest-xdist workers ask for them."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """A folder that `make(folder)` fills once per test session, however many test workers ask for it.

    A module or session fixture runs once per pytest-xdist worker that needs it, so a reference run (a
    launch of two processes: 10-20 s) ran on both workers whenever its tests were split between them. Here
    the first worker to ask makes it, under a file lock in the session's temporary folder (the parent of each
    worker's own, `.../pytest-N/popen-gwK`); the others wait for it and read the same files. Only readers
    share it: no test writes into the folder. A `make` that fails leaves no mark, so the next asker retries
    (and fails with its own message)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers, and by no other session
    folder, done = root / f"once-{name}", root / f"once-{name}.done"
    with (root / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt's leftovers
            folder.mkdir()
            make(folder)
            done.touch()
    return folder
