"""Run folders: written aside under a temporary name and renamed when complete, so a crash never
leaves a half-written run, and an existing run is never overwritten silently. What a killed process
could not clean up (its temporary folder) is removed by the next run of the same name."""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import TunelabError
from .version import __version__


def run_name(cfg) -> str:
    if cfg.name:
        return cfg.name
    source = Path(cfg.data.source).stem if not cfg.data.source.isidentifier() else cfg.data.source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{source}-{cfg.model}-{cfg.method.name}").strip("-")


def check_free(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not overwrite:
        raise TunelabError(f"run folder {folder} exists already; pick another name (name=NEW) or pass --overwrite "
                           f"to replace it once the new run has finished")


def folder_problem(folder: str | Path, key: str) -> str | None:
    """Why `folder` cannot receive runs (a file stands where it or a parent should be; not writable), or None.
    Checked with the config, so that such a mistake ends before any training, not when the run is written."""
    path = Path(folder)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                return (f"`{key}`: {existing} is a file, not a folder; give a folder, which is created if missing "
                        f"(e.g. runs)")
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"`{key}`: you cannot write in {existing}; give a folder you can write in"
            return None
    return None


class RunWriter:
    """Collects a run's files in a temporary folder beside the final one; `commit()` moves it in place."""

    def __init__(self, folder: Path, overwrite: bool = False):
        self.folder = folder
        self.overwrite = overwrite
        check_free(folder, overwrite)
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(folder)
        # The process id (and host) in the name tells a live run's folder from one whose process was killed
        # (`kill -9`, out of memory), which no cleanup could remove.
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-{_owner()}-", dir=folder.parent))

    def path(self, name: str) -> Path:
        return self.tmp / name

    def json(self, name: str, data: Any) -> None:
        self.path(name).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_plain) + "\n")

    def jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        with self.path(name).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_plain) + "\n")

    def yaml(self, name: str, data: Any) -> None:
        self.path(name).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def commit(self) -> Path:
        check_free(self.folder, self.overwrite)
        if self.folder.exists():  # --overwrite: the old run goes only now that the new one is complete
            trash = self.folder.with_name(f".{self.folder.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            self.folder.rename(trash)
            self.tmp.rename(self.folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.tmp.rename(self.folder)
        return self.folder

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class RunLock:
    """`.NAME.lock` beside a run (or comparison) folder while a process writes it: a second process on the same
    name is refused at once, with the holder's pid, host and start, instead of two writers in one folder.

    The file is created with O_EXCL, so of two processes starting together exactly one gets it. A lock whose
    process is gone (killed: no cleanup ran) is taken over when that process was on this machine; one from
    another machine cannot be checked, and the message says how to remove it."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = folder
        self.path = folder.with_name(f".{folder.name}.lock")
        self.what = what

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None and attempt < 10:  # just created, its content not yet written: look again
                    time.sleep(0.05)
                    continue
                if holder and not self._stale(holder):
                    raise TunelabError(
                        f"{self.what} {self.folder} is being written by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('started')}); wait for it to finish, or if that "
                        f"process is gone, delete {self.path}") from None
                self.path.unlink(missing_ok=True)  # stale, unreadable for 0.5 s, or released meanwhile
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "owner": _owner(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            return self
        raise TunelabError(f"could not take the lock {self.path}: other processes keep taking it; try again")

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder and holder.get("owner") == _owner():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict[str, Any] | None:
        """The lock's content: {} once it is gone, None while it cannot be read."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        """Whether the holder was a process of this machine that no longer exists."""
        return process_gone(str(holder.get("owner", "")))


def this_process() -> str:
    """'PID.HOST' of this process, for records shared between machines (a search's trials)."""
    return _owner()


def process_gone(owner: str) -> bool:
    """Whether `owner` ('PID.HOST') was a process of this machine that no longer exists; one of another machine
    cannot be checked (False)."""
    pid, _, host = owner.partition(".")
    return host == _owner().split(".")[1] and pid.isdigit() and not _alive(int(pid))


def _owner() -> str:
    """'PID.HOST': a folder on a shared file system may belong to a live process of another machine."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    return f"{os.getpid()}.{host}"


def _remove_orphans(folder: Path) -> None:
    """Removes the partial folders of this run name left by processes of this machine that no longer exist."""
    host = _owner().split(".")[1]
    for tmp in folder.parent.glob(f".{glob.escape(folder.name)}.partial-*"):
        pid, _, its_host = tmp.name[len(f".{folder.name}.partial-"):].split("-")[0].partition(".")
        if pid.isdigit() and its_host == host and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a zombie has exited; in a container whose first process reaps no orphans it stays one for good
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


PARENT_PID = "TUNELAB_PARENT_PID"


def child_environment() -> dict[str, str]:
    """The environment of a tunelab command that this process starts and waits for (one method of a
    comparison, its search): the child dies with this process, see `die_with_parent`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID: str(os.getpid())}


def die_with_parent() -> None:
    """Makes this process end when the process that started it ends, even by SIGKILL, after which no cleanup of
    the parent's runs: an orphaned method would train on, holding its run's lock, and the resumed comparison
    would be refused. SIGKILL, not SIGTERM, so that the lock is free at once, not after a last checkpoint; the
    method resumes from its newest complete checkpoint. Linux only (prctl); elsewhere a no-op."""
    parent = os.environ.pop(PARENT_PID, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"tunelab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def read_run(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    folder = Path(folder)
    config = folder / "config.yaml"
    if not config.is_file():
        raise TunelabError(f"{folder} is not a tunelab run folder (no config.yaml); give a folder under runs/")
    return folder, yaml.safe_load(config.read_text())
