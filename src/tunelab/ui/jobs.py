"""A comparison launched from the page: `tunelab compare` in a process of its own, which trains each method in a
process of its own as on the command line. Stopping it sends SIGTERM, as `kill` would: the method under way
finishes its step, saves a checkpoint and stops; launching the same comparison again resumes it from there
(`compare` passes `--resume` to a method whose checkpoint is complete)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..runs import child_environment
from ..training.checkpoint import STATE, complete_checkpoints

STEP = re.compile(r"epoch (\d+)/(\d+): step (\d+)/(\d+), loss ([0-9.eE+-]+|nan)")


@dataclass
class Job:
    """One `tunelab compare` process and where it writes."""
    folder: Path
    methods: list[str]
    process: subprocess.Popen
    log_path: Path
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM: the method under way checkpoints and stops; the comparison ends without a report."""
        if self.running:
            self.stopping = True
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def log(self, last: int = 14) -> str:
        """The last lines: the box shows the newest (a scrolled box would stay at its first lines on refresh)."""
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-last:])
        except FileNotFoundError:
            return ""

    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "stopping…" if self.stopping else "running"
        if code == 0:
            return "finished"
        if self.stopping or code in (143, 130):
            return "stopped (checkpoints kept: Resume continues)"
        lines = [line for line in self.log().splitlines() if line.strip()]
        return f"failed: {lines[-1] if lines else f'exit status {code}'}"


def launch(cfg: dict[str, Any], methods: list[str], folder: Path) -> Job:
    """Write the config into the comparison's folder (`ui-config.yaml`, the file to rerun it from the command line)
    and start `tunelab compare` on it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "ui-config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return resume(folder, methods)


def resume(folder: Path, methods: list[str]) -> Job:
    """Start (again) the comparison whose config the page wrote: finished runs are reused, stopped ones resumed."""
    command = [sys.executable, "-m", "tunelab.cli", "compare", str(folder / "ui-config.yaml"), "--methods",
               ",".join(methods), "--output", str(folder.parent), "--name", folder.name]
    log_path = folder / "ui.log"
    with log_path.open("a") as out:
        out.write("$ tunelab " + " ".join(command[3:]) + "\n")
        out.flush()
        process = start(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Job(folder, methods, process, log_path)


# The process dies with the page's server (`runs.die_with_parent`), which Linux ties to the *thread* that started
# it: started from one of the web server's request threads, which are ended after 10 s idle, a comparison was
# killed midway. One thread that lives as long as the server starts them all.
_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-start")


def start(command: list[str], **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen` from the long-lived starting thread, in an environment that makes it die with this
    process."""
    return _starter.submit(subprocess.Popen, command, env=child_environment(), **popen).result()


def progress(folder: Path, methods: list[str], running: bool) -> list[list[str]]:
    """One row per method: its state and where its training is, read from the comparison folder."""
    rows = []
    for method in methods:
        run = folder / "runs" / method
        log = folder / "runs" / f"{method}.log"
        if (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
            rows.append([method, "finished", f"{metrics['epochs_run']} epoch(s)", _main(metrics)])
            continue
        step = _last_step(log)
        checkpoint = complete_checkpoints(run)
        if running and log.is_file() and step is not None:
            epoch, epochs, done, total, loss = step
            rows.append([method, "training", f"epoch {epoch}/{epochs}, step {done}/{total}", f"loss {loss}"])
        elif running and log.is_file():
            rows.append([method, "starting", "", ""])
        elif checkpoint:
            state = json.loads((checkpoint[0] / STATE).read_text())
            rows.append([method, "stopped, resumable", f"checkpoint at step {state['train']['step']} of "
                         f"{state['total_steps']}", str(checkpoint[0])])
        elif log.is_file() and not running:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            rows.append([method, "failed" if lines else "not started", lines[-1] if lines else "", ""])
        else:
            rows.append([method, "waiting", "", ""])
    return rows


def _last_step(log: Path) -> tuple[str, ...] | None:
    if not log.is_file():
        return None
    found = STEP.findall(log.read_text(errors="replace"))
    return found[-1] if found else None


def _main(metrics: dict[str, Any]) -> str:
    validation = {k: v for k, v in metrics.get("validation", {}).items() if isinstance(v, (int, float))}
    shown = [f"validation {k} {v:.4f}" for k, v in validation.items() if k != "loss"][:2]
    return ", ".join(shown)
