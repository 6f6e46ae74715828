"""Run folders: written aside under a temporary name and renamed when complete, so a crash never
leaves a half-written run, and an existing run is never overwritten silently. What a killed process
could not clean up (its temporary folder) is removed by the next run of the same name."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import tempfile
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
    return True


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
