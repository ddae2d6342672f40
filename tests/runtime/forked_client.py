"""A torchrun worker that is forked instead of started (tests/runtime/forked.py, torchrun_worker): it sends
its argv, environment, working folder and stdin/stdout/stderr to the test worker's fork server, relays the
signals it gets to the process forked for it, and ends as that process ends. Standard library only: it
starts in a few hundredths of a second."""

import contextlib
import json
import os
import signal
import socket
import sys


def main() -> None:
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(os.environ["DBSPEC_TEST_FORK_SOCKET"])
    payload = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(conn, [len(payload).to_bytes(4, "big") + payload], [0, 1, 2])

    def relay(signum, frame) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"%d\n" % signum)

    relayed = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in relayed:
        signal.signal(signum, relay)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            sys.exit(1)
        data += chunk
    status = int(data)
    if os.WIFSIGNALED(status):  # killed: this process too, by the same signal (what torchrun reports)
        signum = os.WTERMSIG(status)
        if signum in relayed:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
