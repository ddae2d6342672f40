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

import atexit
import contextlib
import faulthandler
import json
import multiprocessing
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported by the fork server before it forks anything: what `dbspec run` of a tiny SD run imports, the
# modules it imports lazily too (the compiler, which the CLI runs on the spec; the SD family's loader and
# pipeline; the metrics log's tensorboard writer; PIL's image plugins). Each was imported again in every
# forked process: about a second of each launch's CPU (each of two ranks', each kill test's).
PRELOAD = [
    "dbspec.cli",
    "dbspec.runtime.execute",
    "dbspec.compiler.compile",
    "dbspec.plan.summary",
    "dbspec.runtime.families.sd",
    "dbspec.runtime.imports",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "torch.utils.tensorboard",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
]


def _cli_main(argv: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """In the forked process: the `dbspec` console entry point, output to `log`. SIGUSR1 writes every
    thread's Python stack to the log (run_ranks sends it to a process it is about to stop: where it was)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
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


def run_ranks(
    argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float, world: int = 2
) -> subprocess.CompletedProcess:
    """`dbspec <argv>` as `world` processes of one distributed run on this machine (gloo), each forked from
    the fork server with the environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR / MASTER_PORT on a free port): the runtime's own env:// start, without two fresh interpreters'
    imports per launch. As torchrun does, the first process to fail gets the others stopped (their Python
    stacks written to their output first, SIGUSR1; then SIGTERM, then SIGKILL after a grace period). Returns
    the launch's exit code (0 when every process exits 0, else 1) and every process's output, rank by rank,
    each headed by how it ended (`[rank 1] exit 1 (first to fail)`, `[rank 0] killed by SIGTERM (stopped by
    the launcher)`), as stderr; `launch_failure` makes an assertion's message of it."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with socket.socket() as probe:  # a free port for the rendezvous (parallel test workers never collide)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs, processes = [], []
    try:
        for rank in range(world):
            with tempfile.NamedTemporaryFile(prefix=f"dbspec-rank{rank}-", suffix=".log", delete=False) as h:
                logs.append(Path(h.name))
            rank_env = {
                **env,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world),
                "GROUP_RANK": "0",
            }
            process = context.Process(target=_cli_main, args=(list(argv), rank_env, str(cwd), str(logs[-1])))
            process.start()
            processes.append(process)
        ends = _wait_together(processes, timeout, logs)
        codes = [p.exitcode for p in processes]
        output = "".join(
            f"[rank {r}] {ends[r]}\n{log.read_text(errors='replace')}" for r, log in enumerate(logs)
        )
        return subprocess.CompletedProcess(argv, 0 if codes == [0] * world else 1, "", output)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        for log in logs:
            log.unlink(missing_ok=True)


def _exit_words(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def _wait_together(processes: list, timeout: float, logs: list[Path], grace: float = 30.0) -> list[str]:
    """Wait for every process; once one exits non-zero, dump the others' Python stacks (SIGUSR1) and SIGTERM
    them, then SIGKILL what is left after `grace` seconds. Returns how each process ended, in words. A launch
    still running after `timeout` seconds raises TimeoutError with every process's output (its stacks
    dumped first)."""
    deadline = time.monotonic() + timeout
    stopping, first, stopped = None, None, set()
    while any(p.is_alive() for p in processes):
        if time.monotonic() > deadline:
            _dump_stacks(processes)
            output = "".join(f"[rank {r}]\n{log.read_text(errors='replace')}" for r, log in enumerate(logs))
            raise TimeoutError(f"a distributed launch still ran after {timeout} s:\n{output}")
        failed = [rank for rank, p in enumerate(processes) if p.exitcode not in (None, 0)]
        if stopping is None and failed:
            stopping, first = time.monotonic(), failed[0]
            stopped = {rank for rank, p in enumerate(processes) if p.is_alive()}
            _dump_stacks(processes)
            for p in processes:
                if p.is_alive():
                    p.terminate()
        if stopping is not None and time.monotonic() - stopping > grace:
            for p in processes:
                if p.is_alive():
                    p.kill()
        time.sleep(0.05)
    if first is None:  # failed in the last poll's interval
        first = next((rank for rank, p in enumerate(processes) if p.exitcode != 0), None)
    return [
        _exit_words(p.exitcode)
        + (" (first to fail)" if rank == first else " (stopped by the launcher)" if rank in stopped else "")
        for rank, p in enumerate(processes)
    ]


def _dump_stacks(processes: list) -> None:
    """Every live process writes its threads' Python stacks to its output (`_cli_main`'s SIGUSR1), so a
    launch that failed shows where the others were waiting."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGUSR1)
    if alive:
        time.sleep(0.3)  # faulthandler writes from its signal handler; SIGTERM could overtake it


# Lines of a process's output that say why it ended, and how much of each process's output a failure shows.
_CAUSE = re.compile(r"Traceback|error|Error|note: |Fatal Python|Thread 0x|Current thread|killed|exit \d")
_TAIL_LINES = 12


def launch_failure(done: subprocess.CompletedProcess, *, context: int = 3, limit: int = 12000) -> str:
    """An assertion's message for a failed launch: for each process (run_ranks' `[rank r]` sections; a
    torchrun launch's whole output is one section) its header, the lines around each that says why it ended
    (a traceback, an error, a note, a stack dump), and its last lines, each process within its share of
    `limit` characters. The last 4000 characters of the whole output held only the last process's: the first
    one's cause was cut off."""
    text = done.stderr + (done.stdout or "")
    sections = [s for s in re.split(r"(?m)^(?=\[rank \d+\])", text) if s.strip()]
    share = limit // max(1, len(sections))
    shown = [f"launch exit code {done.returncode}"]
    for section in sections:
        lines = section.splitlines()
        keep = set(range(max(1, len(lines) - _TAIL_LINES), len(lines))) | {0}
        for index, line in enumerate(lines):
            if _CAUSE.search(line):
                keep |= set(range(max(0, index - context), min(len(lines), index + context + 40)))
        picked, previous = [], -1
        for index in sorted(keep):
            if index != previous + 1:
                picked.append("    ...")
            picked.append(lines[index])
            previous = index
        part = "\n".join(picked)
        shown.append(
            part if len(part) <= share else f"{part[: share // 3]}\n    ...\n{part[-2 * share // 3 :]}"
        )
    return "\n".join(shown)


# --- torchrun's workers, forked -----------------------------------------------------------------------------
# The fault tests check what torchrun itself reports (its summary, the root-cause process), so they launch
# through torchrun; its workers were fresh interpreters, each importing torch, diffusers and the runtime
# (most of a launch). Here each worker torchrun starts is a copy of tests/runtime/forked_client.py, a few
# lines of the standard library: it hands its argv, environment (torchrun's RANK, LOCAL_RANK, MASTER_PORT,
# ...), working folder and stdin/stdout/stderr to a server forked from this worker's fork server, which
# forks `dbspec <argv>` with them (the CLI's own entry point, as `python -m dbspec.cli` runs it). The client
# relays the signals torchrun sends it to that process and ends as it ends: its exit code, or killed by the
# same signal (torchrun's report of a SIGKILLed process is unchanged).
SOCKET_ENV = "DBSPEC_TEST_FORK_SOCKET"
_SERVER: dict[str, str] = {}


def torchrun_worker() -> tuple[str, str]:
    """The script torchrun starts as each worker and the socket it reaches this test worker's server on
    (`SOCKET_ENV`); the server is started on first use (a daemon process: it ends with the test worker). The
    script is a copy of tests/runtime/forked_client.py beside the socket: torchrun names it in its report,
    where the fault tests check that no path of dbspec's runtime appears."""
    if "path" not in _SERVER:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        folder = tempfile.mkdtemp(prefix="dbspec-fork-")
        atexit.register(shutil.rmtree, folder, True)
        path = os.path.join(folder, "server.sock")
        _SERVER["client"] = shutil.copy(Path(__file__).with_name("forked_client.py"), folder)
        ready = context.Event()
        context.Process(target=_serve, args=(path, ready), daemon=True).start()
        if not ready.wait(120):
            raise TimeoutError("the torchrun-worker fork server did not start")
        _SERVER["path"] = path
    return _SERVER["client"], _SERVER["path"]


def _serve(path: str, ready) -> None:
    """Accept clients; for each, a handler process that forks the CLI and reports how it ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    ready.set()
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this handler waits for its CLI process
            try:
                _handle(conn)
            finally:
                os._exit(0)
        conn.close()


def _handle(conn: socket.socket) -> None:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(message[:4], "big")
    while len(message) < 4 + size:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return
        message += chunk
    request = json.loads(message[4 : 4 + size])
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        code = 1
        try:
            _cli_in_place(request["argv"], request["env"], request["cwd"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    while True:  # relay the client's signals until the CLI process ends
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable:
            data = conn.recv(64)
            signum = int(data.split()[0]) if data.strip() else signal.SIGKILL  # EOF: the client was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    with contextlib.suppress(OSError):
        conn.sendall(b"%d\n" % status)


def _cli_in_place(argv: list[str], env: dict[str, str], cwd: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["dbspec", *argv]
    from dbspec.cli import main

    main()
