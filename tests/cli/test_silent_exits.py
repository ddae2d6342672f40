"""`dbspec` never ends without saying why: a crash in native code prints the Python stacks (faulthandler),
and a Ctrl-C that reaches the entry point says so. A two-process FSDP run once lost a process to a segfault
in gloo's network thread (`pt_gloo_runloop ... segfault` in the kernel log) with no word in its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dbspec import cli

ROOT = Path(__file__).resolve().parents[2]


def test_a_segfault_prints_every_threads_python_stack():
    """The entry point turns faulthandler on before the command runs: the process still dies of the signal
    (exit -11), now with Python's report on stderr."""
    code = (
        "import faulthandler\n"
        "from dbspec import cli\n"
        "def crash():\n"
        "    faulthandler._sigsegv()\n"
        "cli.app = crash\n"
        "cli.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -11, done.stderr
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "line 4 in crash" in done.stderr, done.stderr


def test_a_ctrl_c_reaching_the_entry_point_says_so(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    assert "error: process 1: interrupted (SIGINT)" in capsys.readouterr().err
