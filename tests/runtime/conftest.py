"""Fixtures shared by several runtime test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.shared import once_per_session


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory) -> Path:
    """An uninterrupted run of two processes (torchrun, gloo), batch 1 each, test_processes' spec: its output
    folder. The reference of test_processes.py and test_process_faults.py, launched once per session (each
    launch pays two processes' imports)."""
    from tests.runtime.test_processes import _launch, _spec

    def make(folder: Path) -> None:
        done = _launch(_spec(folder, batch=1, accumulation=1))
        assert done.returncode == 0, done.stderr[-4000:]

    return once_per_session(tmp_path_factory, "two-processes", make) / "out"
