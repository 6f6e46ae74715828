"""Real kills: `tunelab train` as a subprocess, killed with SIGKILL at moments drawn at random (seeded) — in
steps, evaluations, and inside checkpoint writes — and resumed after each. The finished run must be bit for bit the
uninterrupted one, and every resume must start from the newest checkpoint that was written whole. The same for
`tunelab compare`, killed while one of its methods trains.

On a tiny model a step takes milliseconds, so the child process stretches time where kills should be able to land:
0.1 s before each optimizer update, 0.3 s after each file a checkpoint writes (`SLOW_CHILD`, in the test only)."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from conftest import one_thread_env

KILLS = 10


SLOW_CHILD = """
import sys, time, torch
import tunelab.training.checkpoint as checkpoint
step, save = torch.optim.AdamW.step, checkpoint.save_file
torch.optim.AdamW.step = lambda self, *a, **k: (time.sleep(0.1), step(self, *a, **k))[1]
checkpoint.save_file = lambda *a, **k: (save(*a, **k), time.sleep(0.3))[0]
from tunelab.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def _command(config: Path, *extra: str, slow: bool = False) -> list[str]:
    if slow:
        return [sys.executable, "-c", SLOW_CHILD, str(config), *extra]
    return [sys.executable, "-m", "tunelab.cli", "train", str(config), *extra]


def _newest_complete_step(runs: Path, name: str) -> int | None:
    state = runs / f".{name}.checkpoint" / "trainer_state.json"
    if state.is_file():
        return json.loads(state.read_text())["train"]["step"]
    older = sorted(runs.glob(f".{name}.checkpoint.[0-9]*/trainer_state.json"))
    return json.loads(older[0].read_text())["train"]["step"] if older else None


def _mark(folder: Path) -> tuple[int, int] | None:
    """Which partial checkpoint folder is there (inode, last change), if any."""
    try:
        stat = folder.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run / "history.jsonl").read_text().splitlines()]


# Warm processes (tests/warm): the process killed is the stand-in, and the forked `tunelab train` it stands for
# kills itself on the stand-in's death, within milliseconds. `communicate()` below returns only once the pipes are
# closed, which that child holds too: it is gone before the next resume starts, so the resume meets no live lock.
@pytest.mark.long(seconds=51)
def test_sigkill_at_ten_random_moments_then_resume_ends_as_the_uninterrupted_run(tiny_config, tmp_path):
    cfg = tiny_config("full")
    cfg["train"].update(epochs=3, checkpoint_every=2, log_every=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    runs = Path(cfg["output"])
    straight = subprocess.run(_command(config, "name=straight"), env=one_thread_env(), capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr

    rng = random.Random(0)
    landed: list[str] = []  # where each kill fell
    resumed_from: list[tuple[int | None, str]] = []
    while len(landed) < KILLS:
        newest = _newest_complete_step(runs, "killed")
        command = _command(config, "name=killed", *(["--resume"] if newest is not None else []), slow=True)
        process = subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        first = process.stdout.readline()  # "run …": the config and data are read, the model loads next
        assert first.startswith("run "), (first, process.stderr.read())
        partial_before = _mark(runs / ".killed.checkpoint.partial")
        # The first kill lands while the model loads (before any write), so that not every kill falls in a write
        # whatever this machine's speed; the others are drawn.
        time.sleep(rng.uniform(0.0, 2.0) if landed else 0.0)
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, "the run finished before it was killed often enough"
        resumed = [line for line in out.splitlines() if line.startswith("resumed from the checkpoint at step ")]
        if newest is not None and resumed:  # it got as far as resuming: from the newest complete checkpoint
            resumed_from.append((newest, resumed[0]))
        assert not any("is damaged" in line for line in out.splitlines()), out
        partial = _mark(runs / ".killed.checkpoint.partial")  # a write this process began and did not finish
        landed.append("in a checkpoint write" if partial is not None and partial != partial_before
                      else "elsewhere (a step, an evaluation, loading)")

    final = subprocess.run(_command(config, "name=killed", "--resume"), env=one_thread_env(), capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert landed.count("in a checkpoint write") >= 2 and len(set(landed)) == 2, landed
    for step, line in resumed_from:
        assert line.startswith(f"resumed from the checkpoint at step {step} of 27"), (step, line)
    a, b = _weights(runs / "straight"), _weights(runs / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert _history(runs / "straight") == _history(runs / "killed")
    m1, m2 = (json.loads((runs / n / "metrics.json").read_text()) for n in ("straight", "killed"))
    assert m1["test"] == m2["test"] and m1["validation"] == m2["validation"]
    assert sorted(p.name for p in runs.iterdir()) == ["killed", "straight"]  # no checkpoint, partial or lock left
    print(f"kills: {len(landed)}, {landed.count('in a checkpoint write')} inside a checkpoint write; "
          f"resumes checked: {len(resumed_from)}")


# A comparison runs each method as a child `tunelab train`; every Python process of the test runs this first
# (TUNELAB_TEST_PRELOAD, tests/warm/sitecustomize.py), so the children are slowed as SLOW_CHILD slows one.
SLOW_PRELOAD = """
import time
import torch
import tunelab.training.checkpoint as checkpoint
step, save = torch.optim.AdamW.step, checkpoint.save_file
torch.optim.AdamW.step = lambda self, *a, **k: (time.sleep(0.1), step(self, *a, **k))[1]
checkpoint.save_file = lambda *a, **k: (save(*a, **k), time.sleep(0.3))[0]
"""


def _compare(config: Path, output: Path, name: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "compare", str(config), "--methods", "lora,full",
                             "--output", str(output), "--name", name], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _lock_holders(folder: Path) -> list[int]:
    """The processes named in the comparison's and its runs' lock files that still live."""
    from tunelab.runs import _alive
    pids = []
    for lock in [*folder.parent.glob(".*.lock"), *folder.glob("runs/.*.lock")]:
        try:
            pids.append(int(json.loads(lock.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return [p for p in pids if _alive(p)]


# Warm processes, as in the test above: a killed comparison's stand-in takes its forked child with it, and the
# methods' processes die with that child (tunelab.runs), which the lock check below waits for.
@pytest.mark.long(seconds=40)
def test_compare_killed_mid_method_resumes_to_the_uninterrupted_comparison(tiny_config, tmp_path):
    cfg = tiny_config("full")
    cfg["train"].update(epochs=2, checkpoint_every=2, log_every=2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_PRELOAD)
    output = tmp_path / "cmp"
    straight = _compare(config, output, "straight", one_thread_env())
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    env = {**one_thread_env(), "TUNELAB_TEST_PRELOAD": str(slow)}
    rng = random.Random(1)
    landed, resumes = [], 0
    while len(landed) < 4:
        process = _compare(config, output, "killed", env)
        method, target = None, "lora" if len(landed) < 2 else "full"  # two kills in each method
        for line in process.stdout:  # wait until the target's training has begun, then kill the comparison in it
            if line.startswith("["):
                method = line.split()[-1]
            resumes += line.strip().startswith("resuming from its checkpoint")
            if method == target and line.strip().startswith(("epoch ", "resumed from the checkpoint")):
                break
        else:
            raise AssertionError("the comparison finished before it was killed often enough")
        time.sleep(rng.uniform(0.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        landed.append(method)
        # Its method's process dies with it, so no orphan trains on holding the run's lock.
        deadline = time.time() + 10
        while _lock_holders(output / "killed") and time.time() < deadline:
            time.sleep(0.1)
        assert not _lock_holders(output / "killed"), "a killed comparison's method kept running"

    final = _compare(config, output, "killed", one_thread_env())
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out
    resumes += out.count("resuming from its checkpoint")
    assert resumes >= 2, (resumes, landed)
    a, b = (json.loads((output / n / "comparison.json").read_text()) for n in ("straight", "killed"))
    for row_a, row_b in zip(a["rows"], b["rows"], strict=True):
        assert (row_a["method"], row_a["test"], row_a["validation"]) == (row_b["method"], row_b["test"],
                                                                          row_b["validation"])
    for method in ("lora", "full"):
        runs_a, runs_b = output / "straight" / "runs" / method, output / "killed" / "runs" / method
        wa, wb = _weights(runs_a), _weights(runs_b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa), method
        assert _history(runs_a) == _history(runs_b), method
    assert sorted(p.name for p in (output / "killed" / "runs").iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in output.iterdir()) == ["killed", "straight"]  # no lock left
    print(f"comparison kills: {len(landed)} (in {', '.join(landed)}); resumes from a checkpoint: {resumes}")


PARENT = """
import subprocess, sys
from tunelab.runs import child_environment
child = subprocess.Popen([sys.executable, "-c", "from tunelab.runs import die_with_parent; die_with_parent(); "
                          "import time; print('ready', flush=True); time.sleep(120)"],
                         env=child_environment(), stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "ready\\n"
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.cold_processes  # the child's pid, as printed, must be the process that dies
def test_a_process_a_comparison_starts_dies_with_it_even_on_sigkill():
    """Without this, a method whose comparison was killed trains on until its next line of output fails, holding
    its run's lock: minutes on a real model, and the resumed comparison would find the run locked."""
    from tunelab.runs import _alive
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=one_thread_env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
