"""Fixtures shared by several runtime test files."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from tests.runtime.shared import once_per_session


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory) -> Path:
    """An uninterrupted run of two processes (torchrun, gloo), batch 1 each, test_processes' spec: its output
    folder. The reference of test_processes.py and test_process_faults.py, launched once per session (each
    launch pays two processes' imports)."""
    from tests.runtime.forked import launch_failure
    from tests.runtime.test_processes import _launch, _spec

    def make(folder: Path) -> None:
        done = _launch(_spec(folder, batch=1, accumulation=1))
        assert done.returncode == 0, launch_failure(done)

    return once_per_session(tmp_path_factory, "two-processes", make) / "out"


@pytest.fixture(scope="session", autouse=True)
def tiny_folders_once(tmp_path_factory):
    """Each built-in tiny model's diffusers folder is built and saved once per session (about a second per
    run that materializes it: every run's own cache folder does), then copied wherever a run or a test
    materializes it into a missing folder. The real `materialize` then checks the copy's marker and every
    file's hash and keeps it: the path a second run into the same cache takes. Any other case (a folder that
    is there, another seed) is the real `materialize`'s alone, and test_tiny.py calls that one directly."""
    from dbspec.runtime import tiny

    real = tiny.materialize

    def materialize(name: str, folder: Path, seed: int = 0) -> Path:
        folder = Path(folder)
        if seed == 0 and not folder.exists():
            made = once_per_session(
                tmp_path_factory, f"tiny-{name.replace(':', '-')}", lambda f: real(name, f / "model")
            )
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(made / "model", folder)
        return real(name, folder, seed)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "materialize", materialize)
        yield


@pytest.fixture(autouse=True)
def lycoris_presets_restored():
    """lycoris-lora's apply_preset (create_network with a preset) sets LycorisNetworkKohya's class attributes,
    which then hold for every later network in the worker: each test gets the attributes it started with back,
    so no test's preset leaks into another's (tests that also restore them themselves are unaffected)."""
    try:
        from lycoris.kohya import LycorisNetworkKohya as network
    except ImportError:
        yield
        return
    saved = {k: copy.copy(v) for k, v in vars(network).items() if k.isupper()}
    yield
    for key, value in saved.items():
        setattr(network, key, value)
