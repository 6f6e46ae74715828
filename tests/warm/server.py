"""The tests' warm interpreter: a process that imports torch, transformers, peft and scikit-learn once, then forks a
child for each Python command a test starts (`tests/warm/sitecustomize.py` hands the commands over). Over a hundred
of the suite's processes are `tunelab train`, `compare`, `tune` or a training worker on a tiny model, and each spent
about 5 of its 7 seconds importing; a forked child starts with the imports done.

The child is the command as Python would run it: its argv, working directory, environment and standard streams
(passed over the socket), `__main__`, exit status and atexit handlers. It ends when the process that asked for it
ends (a SIGKILL included), and its status goes back to that process, which exits with it.

    python tests/warm/server.py SOCKET_PATH"""
from __future__ import annotations

import atexit
import io
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
import types

def preload() -> None:
    """What nearly every command imports; a tiny model's own modeling file too, as transformers loads it lazily."""
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import yaml  # noqa: F401
    from transformers import AutoModel, get_scheduler  # noqa: F401


def serve(path: str) -> None:
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # clients connect only once the imports are done
    parent = os.getppid()
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection of the process that asked for it
    while os.getppid() == parent:  # the pytest process that started this one is gone: so is this
        if select.select([listener], [], [], 0.02)[0]:
            accepted = _accept(listener)
            if accepted is not None:
                conn, request, fds = accepted
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in waiting.values():
                        other.close()
                    _run(conn, request, fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            result = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
            try:
                conn.sendall(f"{result}\n".encode())
            except OSError:  # the process that asked is gone
                pass
            conn.close()


def _accept(listener: socket.socket) -> tuple[socket.socket, dict, list[int]] | None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, 8, 3)
        size, payload = int.from_bytes(head, "big"), b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise EOFError
            payload += chunk
        if len(fds) != 3:
            raise EOFError
        return conn, json.loads(payload), fds
    except (OSError, EOFError, ValueError):
        conn.close()
        for fd in fds:
            os.close(fd)
        return None


def _run(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the command, run it, exit as Python would. Never returns."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    _streams(unbuffered=request["unbuffered"] or bool(env.get("PYTHONUNBUFFERED")))
    if "numpy" in sys.modules:  # numpy's global generator would otherwise be the same in every child
        sys.modules["numpy"].random.seed()
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # torch read it when the server imported it: the command's own count,
        sys.modules["torch"].set_num_threads(int(threads))  # as a cold start reads it (same threads, same bits)

    def die_with_the_asker() -> None:
        while True:
            try:
                if not conn.recv(1):
                    break
            except OSError:
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die_with_the_asker, daemon=True).start()
    code = 0
    try:
        _execute(request)
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt as stop:
        _print_uncaught(stop)
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as error:  # noqa: BLE001 - printed as the interpreter prints an uncaught exception
        _print_uncaught(error)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined] - waits for non-daemon threads, as at interpreter exit
    except Exception:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _execute(request: dict) -> None:
    kind, target, args = request["kind"], request["target"], request["args"]
    import runpy
    from sitecustomize import preload_test_patches  # the client's (tests/warm), imported when this process started
    preload_test_patches()  # as a cold start of the command runs it, from sitecustomize
    if kind == "-m":
        sys.argv = ["-m", *args]
        sys.path[0] = os.getcwd()
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "-c":
        sys.argv = ["-c", *args]
        sys.path[0] = ""
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        sys.argv = [target, *args]
        sys.path[0] = os.path.dirname(target)
        runpy.run_path(target, run_name="__main__")


def _streams(unbuffered: bool) -> None:
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=encoding)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=encoding,
                                  errors="backslashreplace" if fd == 2 else "strict",
                                  line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _print_uncaught(error: BaseException) -> None:
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # this file's frames: not the command's
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
