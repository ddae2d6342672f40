"""The command printed when a run is interrupted resumes that run: same source, every --set, shell-quoted.

(tests/runtime/test_run_cli.py follows the printed command after a real Ctrl-C.)"""

from __future__ import annotations

import shlex
from pathlib import Path

from dbspec.cli import resume_command


def test_every_set_comes_back_quoted_and_overwrite_never_does():
    overrides = [
        "optimizer.lr=2e-6",
        "validation.negative_prompt=blurry, 'low' quality",
        "output.dir=$HOME/a b",
    ]
    command = resume_command(Path("my specs/dog.toml"), overrides, strict=False)
    assert shlex.split(command) == [
        "dbspec",
        "run",
        "my specs/dog.toml",
        "--set",
        overrides[0],
        "--set",
        overrides[1],
        "--set",
        overrides[2],
        "--resume",
    ]
    assert "'output.dir=$HOME/a b'" in command  # single quotes: the shell expands nothing
    assert "--overwrite" not in command


def test_a_plain_run_and_strict():
    assert resume_command(Path("dog.toml"), [], strict=False) == "dbspec run dog.toml --resume"
    assert resume_command(Path("dog.toml"), [], strict=True) == "dbspec run dog.toml --strict --resume"
