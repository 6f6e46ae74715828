"""The tests' warm interpreter (`tests/warm/`): a process a test starts is forked with torch imported, and is
otherwise the command Python would run — argv, working directory, environment, streams, exit status, signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

PROBE = """
import os, sys
print("torch" in sys.modules, sys.argv[1:], os.getcwd(), os.environ.get("PROBE"), sys.stdin.read().strip())
sys.exit(int(sys.argv[1]))
"""


def _wait_for_the_server() -> None:
    socket = os.environ.get("TUNELAB_TEST_WARM")
    if not socket:
        pytest.skip("TUNELAB_TEST_COLD is set: no warm interpreter")
    deadline = time.time() + 120
    while not os.path.exists(socket):  # it binds its socket once its imports are done
        assert time.time() < deadline, "the warm interpreter did not start: see server.log next to its socket"
        time.sleep(0.2)


def test_a_started_process_is_forked_warm_and_is_the_command_as_python_runs_it(tmp_path):
    _wait_for_the_server()
    done = subprocess.run([sys.executable, "-c", PROBE, "3", "more"], input="from stdin\n", capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PROBE": "set"}, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"True ['3', 'more'] {tmp_path} set from stdin\n"  # torch was there before the code ran

    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
                            capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGTERM

    failed = subprocess.run([sys.executable, "-c", "raise ValueError('shown')"], capture_output=True, text=True,
                            timeout=60)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == "ValueError: shown" and "warm" not in failed.stderr  # no server frames


def test_a_signal_to_the_started_process_reaches_the_forked_one(tmp_path):
    _wait_for_the_server()
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); print('ready', " \
           "flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 7  # the forked process's handler ran, and its status came back


@pytest.mark.cold_processes
def test_a_test_marked_cold_starts_its_processes_as_usual():
    done = subprocess.run([sys.executable, "-c", "import sys; print('torch' in sys.modules)"], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout == "False\n"


def test_a_pytest_worker_computes_on_one_thread_as_the_processes_it_starts():
    """A `make test` worker is forked from the warm interpreter with torch imported before conftest set
    OMP_NUM_THREADS: conftest sets torch's threads itself, or a worker would compute on every core."""
    import torch
    if os.environ.get("PYTEST_XDIST_WORKER"):
        assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    else:
        pytest.skip("not a pytest-xdist worker")
