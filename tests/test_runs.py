"""Run folders: what a killed process left behind is removed, and only that."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import one_thread_env
from tunelab.runs import RunWriter, _owner


def test_a_new_run_removes_the_partial_folders_of_dead_processes_of_this_machine_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    host = _owner().split(".")[1]
    runs = tmp_path / "runs"
    left = {name: runs / f".r.partial-{name}-abc" for name in
            (f"{dead_pid}.{host}", f"{os.getpid()}.{host}", f"{dead_pid}.0another", "old")}
    for folder in left.values():
        folder.mkdir(parents=True)
    writer = RunWriter(runs / "r")
    assert not left[f"{dead_pid}.{host}"].exists()  # killed here: nobody else will ever clean it
    assert left[f"{os.getpid()}.{host}"].exists()  # a live run's
    assert left[f"{dead_pid}.0another"].exists()  # another machine's process: it may be alive there
    assert left["old"].exists()  # a name without a process id: not ours to judge
    assert writer.tmp.name.startswith(f".r.partial-{os.getpid()}.{host}-")
    writer.discard()


# --- one writer per run name ---------------------------------------------------------------------------------

def test_a_second_writer_of_a_run_is_refused_with_the_holder_named_and_the_lock_goes_with_the_first(tmp_path):
    import pytest

    from tunelab.errors import TunelabError
    from tunelab.runs import RunLock
    with RunLock(tmp_path / "runs" / "r"):
        lock = tmp_path / "runs" / ".r.lock"
        assert lock.is_file()
        with pytest.raises(TunelabError) as info:
            with RunLock(tmp_path / "runs" / "r"):
                pass
        message = str(info.value)
        assert f"run {tmp_path / 'runs' / 'r'} is being written by process {os.getpid()} on " in message
        assert f"delete {lock}" in message
        with RunLock(tmp_path / "runs" / "other"):  # another name is another lock
            pass
    assert not lock.exists()


def test_a_stale_lock_of_a_dead_process_here_is_taken_over_but_not_another_machines(tmp_path):
    import json

    import pytest

    from tunelab.errors import TunelabError
    from tunelab.runs import RunLock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _owner().split(".")[1]
    lock = tmp_path / ".r.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "owner": f"{int(dead.stdout)}.{host}",
                                "started": "then"}))
    with RunLock(tmp_path / "r"):  # killed with -9: no cleanup ran, nobody else will remove it
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "owner": "1.0another", "started": "then"}))
    with pytest.raises(TunelabError, match="being written by process 1 on elsewhere"):
        with RunLock(tmp_path / "r"):
            pass
    lock.write_text("")  # a process killed between creating the lock and writing it
    with RunLock(tmp_path / "r"):
        pass


@pytest.mark.long(seconds=30)
def test_two_train_processes_on_one_run_name(tiny_config, tmp_path):
    """The second `tunelab train` is refused at once (exit 2, naming the first); once the first is killed with
    -9, the same command takes the stale lock over and goes on."""
    import signal
    import time

    import yaml
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config("full")))
    command = [sys.executable, "-m", "tunelab.cli", "train", str(config), "name=shared"]
    # The lock names the pid of the process holding it: the first and third start cold (tests/warm), so that the
    # pid is the one the test started; the second, refused, may be forked warm.
    cold = one_thread_env(cold=True)
    first = subprocess.Popen(command + ["train.epochs=500", "train.early_stopping.patience=500"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cold)
    try:
        assert first.stdout.readline().startswith("run ")  # it holds the lock from before this line
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is being written by process {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    runs = tmp_path / "runs"
    resume = ["--resume", "train.epochs=500", "train.early_stopping.patience=500"] \
        if (runs / ".shared.checkpoint").is_dir() else []
    third = subprocess.Popen(command + resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cold)
    try:
        line = third.stdout.readline()
        assert line.startswith("run ") or line.startswith("resumed"), (line, third.stderr.read())
        deadline = time.time() + 30
        while time.time() < deadline and '"pid": %d' % third.pid not in (runs / ".shared.lock").read_text():
            time.sleep(0.05)
        assert f'"pid": {third.pid}' in (runs / ".shared.lock").read_text()
    finally:
        third.send_signal(signal.SIGKILL)
        third.wait(timeout=60)
