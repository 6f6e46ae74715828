"""Child tunelab processes of a comparison: one per method (or search), run one after another or several at once.

`compare --parallel N` runs N methods at a time on a CPU machine, the cores split between them (each child gets
`OMP_NUM_THREADS` = cores / N: N processes that each start a thread per core would fight over the cores and finish
later than one after another). `compare --devices 0,1` runs one method per GPU (`CUDA_VISIBLE_DEVICES`). Every
child dies with the comparison (`runs.die_with_parent`), and Ctrl-C or SIGTERM stops the ones under way.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from .runs import child_environment

T = TypeVar("T")
_running: set[subprocess.Popen] = set()  # children under way, to stop them all when the comparison is stopped
_lock = threading.Lock()


def slots(parallel: int = 1, devices: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each concurrent child: one per device, or `parallel` CPU shares of the cores."""
    if devices:
        return [{"CUDA_VISIBLE_DEVICES": d} for d in devices]
    if parallel <= 1:
        return [{}]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * parallel


def run_all(items: list[Any], work: Callable[[Any, dict[str, str]], T], environments: list[dict[str, str]]
            ) -> list[T]:
    """`work(item, environment)` for every item, as many at once as there are environments; results in item
    order. If one raises (Ctrl-C, SIGTERM, a bug), the children under way are stopped and it is raised."""
    if len(environments) == 1:
        return [work(item, environments[0]) for item in items]
    free: queue.Queue[dict[str, str]] = queue.Queue()
    for env in environments:
        free.put(env)

    def one(item):
        env = free.get()
        try:
            return work(item, env)
        finally:
            free.put(env)

    pool = ThreadPoolExecutor(max_workers=len(environments))
    futures = []
    try:
        futures = [pool.submit(one, item) for item in items]
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:  # those not started yet never start
            f.cancel()
        with _lock:
            for process in _running:
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def stream(command: list[str], log_path: Path, log: Callable[[str], None], env: dict[str, str] | None = None
           ) -> tuple[int, str, float]:
    """Run a tunelab command in a process of its own, its output to `log_path` and to `log`; returns its exit
    status, its last line and its seconds."""
    started = time.time()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**child_environment(), **(env or {})})
        with _lock:
            _running.add(process)
        last = ""
        try:
            for line in process.stdout:
                log_file.write(line)
                if line.strip():
                    last = line.strip()
                    log(f"  {line.rstrip()}")
            status = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM here: the child stops too, and cleans up after itself
            process.terminate()
            process.wait()
            raise
        finally:
            with _lock:
                _running.discard(process)
    return status, last, round(time.time() - started, 1)
