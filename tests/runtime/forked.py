"""`dbspec run` in a real, separate process that does not pay Python's imports each time.

A kill test needs a process of its own (its own pid, SIGKILLed with no cleanup, its files left as they
are) but not a fresh interpreter: importing torch, diffusers and the runtime is most of the 6-8 s such a
process takes on this machine. The processes here are forked from a multiprocessing fork server (one per test
worker) that imported the CLI and the runtime once, before any tensor work (so no thread pool is forked).
Each runs the CLI's own entry point (`dbspec.cli.main`) with the given argv, environment and working
directory, exactly as `python -m dbspec.cli` would; its stdout and stderr go to a file,
read back for the failure message.

The one difference from a fresh interpreter: the runtime was imported before the plan was read, so diffusers
saw every optional library (runtime/imports.py hides the ones a plan never calls while it imports). For a plan
that uses peft (an adapter), as the kill tests' does, the fresh CLI imports them all too.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

# Imported by the fork server before it forks anything: what `dbspec run` imports.
PRELOAD = ["dbspec.cli", "dbspec.runtime.execute"]


def _cli_main(argv: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """In the forked process: the `dbspec` console entry point, output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["dbspec", *argv]
    from dbspec.cli import main

    main()


def run_cli(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run `dbspec <argv>` in a forked process; its exit code (negative: killed by that signal) and output.
    A process still running after `timeout` seconds is killed and reported as a timeout."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # takes effect when this worker's fork server starts
    with tempfile.NamedTemporaryFile(prefix="dbspec-run-", suffix=".log", delete=False) as handle:
        log = Path(handle.name)
    try:
        process = context.Process(target=_cli_main, args=(list(argv), dict(env), str(cwd), str(log)))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise TimeoutError(f"`dbspec {' '.join(argv)}` still ran after {timeout} s:\n{log.read_text()}")
        return process.exitcode, log.read_text(errors="replace")
    finally:
        log.unlink(missing_ok=True)
