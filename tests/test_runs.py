"""Run folders: what a killed process left behind is removed, and only that."""
from __future__ import annotations

import os
import subprocess
import sys

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
