"""Named write points, where the kill-at-point harness (tests/runtime/test_kill_points.py) stops a run.

`reached(name)` marks a moment between two writes. With DBSPEC_KILL_AT=name (or name@N for its Nth arrival)
in the environment, the process kills itself there with SIGKILL: no `finally`, no atexit, as after a power
cut or an OOM kill. `name:INT` or `name:TERM` sends that signal instead, as a user's Ctrl-C or a scheduler's
stop would. Without the variable (always, outside the harness) it costs one environment lookup."""

from __future__ import annotations

import os
import signal

ENV = "DBSPEC_KILL_AT"
_arrivals: dict[str, int] = {}


def reached(name: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    target, _, sent = target.partition(":")
    point, _, nth = target.partition("@")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sent or 'KILL'}"))
