"""Named points where the fault harness stops a run (tests/runtime/test_kill_points.py and
test_process_faults.py).

`reached(name)` marks a moment between two writes (and a few moments of a step). With DBSPEC_KILL_AT=name (or
name@N for its Nth arrival) in the environment, the process kills itself there with SIGKILL: no `finally`, no
atexit, as after a power cut or an OOM kill. `name:INT` or `name:TERM` sends that signal instead, as a user's
Ctrl-C or a scheduler's stop would; `name:RAISE` raises `InjectedFault` there, as a bug would. `poisoned(name,
loss)` is a point that, with `name:NAN`, turns the loss tensor into NaN, as an overflow would.
DBSPEC_KILL_RANK=r makes only the process of rank r (RANK, set by torchrun and accelerate launch) act: one
process of several failing. Without DBSPEC_KILL_AT (always, outside the harness) a point costs one environment
lookup."""

from __future__ import annotations

import os
import signal

ENV = "DBSPEC_KILL_AT"
RANK_ENV = "DBSPEC_KILL_RANK"
_arrivals: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """The harness's `name:RAISE`: an exception no dbspec code expects."""


def _due(name: str) -> str | None:
    """The action (KILL, INT, TERM, RAISE, NAN) due at this arrival at `name`, or None."""
    target = os.environ.get(ENV)
    if not target:
        return None
    target, _, action = target.partition(":")
    point, _, nth = target.partition("@")
    if point != name:
        return None
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank != (os.environ.get("RANK") or "0"):
        return None
    _arrivals[name] = _arrivals.get(name, 0) + 1
    return (action or "KILL") if _arrivals[name] == int(nth or 1) else None


def reached(name: str) -> None:
    action = _due(name)
    if action is None:
        return
    if action == "RAISE":
        raise InjectedFault(f"fault injected at `{name}` ({ENV})")
    os.kill(os.getpid(), getattr(signal, f"SIG{action}"))


def poisoned(name: str, loss):
    """`loss`, or with `name:NAN` due here, `loss` times NaN (a real non-finite tensor, same graph)."""
    if _due(name) == "NAN":
        return loss * float("nan")
    return loss
