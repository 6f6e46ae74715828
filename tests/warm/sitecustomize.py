"""The client side of the tests' warm interpreter (`tests/warm/server.py`): imported by every Python process the
tests start (conftest puts this folder on PYTHONPATH), it hands the command to the server, which forks a child with
torch and transformers already imported, and stands in for that child until it ends: same exit status, signals
passed on, dying with its parent where tunelab asks for that. Anything it cannot hand over exactly (interpreter
options, another PYTHONPATH, an interactive session, no server) runs here as usual: this module then does nothing."""
from __future__ import annotations

import os
import sys

SOCKET = "TUNELAB_TEST_WARM"  # the server's socket path; unset: every process starts cold
PATH_SEEN = "TUNELAB_TEST_WARM_PATH"  # the PYTHONPATH the server started with
PARENT_PID = "TUNELAB_PARENT_PID"  # tunelab.runs: this process is to die with its parent
# A Python file every process of a test runs before its command, warm or cold: a test's patches (tests/test_kills.py
# slows training with it), which a sitecustomize of the test's own could not give a warm child.
PRELOAD = "TUNELAB_TEST_PRELOAD"


def preload_test_patches() -> None:
    path = os.environ.get(PRELOAD)
    if path:
        import runpy
        runpy.run_path(path, run_name="__tunelab_test_preload__")


def _command(argv: list[str]) -> dict | None:
    """What `python ...` is to run, or None where the command uses something the warm child would not honour."""
    args, unbuffered = argv[1:], False
    while args and args[0].startswith("-") and args[0] not in ("-m", "-c", "-"):
        if args[0] != "-u":
            return None
        unbuffered = True
        args = args[1:]
    if not args or args[0] == "-":
        return None
    if args[0] in ("-m", "-c"):
        if len(args) < 2:
            return None
        kind, target, rest = args[0], args[1], args[2:]
    else:
        kind, target, rest = "script", os.path.abspath(args[0]), args[1:]
    return {"kind": kind, "target": target, "args": rest, "unbuffered": unbuffered}


def _hand_over() -> None:
    path = os.environ.get(SOCKET)
    if not path or os.environ.get("PYTHONPATH", "") != os.environ.get(PATH_SEEN, "") or sys.flags.isolated:
        return
    command = _command(list(getattr(sys, "orig_argv", [])))
    if command is None:
        return
    import json
    import signal
    import socket

    if os.environ.get(PARENT_PID):  # this stand-in dies with its parent (and the child with it); the variable
        from tunelab.runs import die_with_parent  # goes, so the child does not ask again of the server's pid
        die_with_parent()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
    except OSError:
        return
    payload = json.dumps({**command, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [len(payload).to_bytes(8, "big")], [0, 1, 2])
    conn.sendall(payload)
    reader = conn.makefile("r")
    pid = int(reader.readline())

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
        signal.signal(signum, forward)
    kind, value = reader.readline().split()
    if kind == "signal":
        signal.signal(int(value), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [int(value)])
        os.kill(os.getpid(), int(value))
    os._exit(int(value))


_hand_over()
preload_test_patches()  # reached only where this process runs its command itself (cold)
