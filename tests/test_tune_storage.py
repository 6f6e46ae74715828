"""`tunelab tune --storage URL`: workers on several machines share one Optuna study. Here two worker processes of
the same command share a real PostgreSQL server (started on loopback in a temporary folder) and, the same way, an
SQLite file; each shared search must hold exactly the trials asked, none run twice, and end at the best a single
worker finds.

Why the same best: the startup trials are drawn from (train.seed, trial number) alone (`tune.TrialSeeded`), and
here every trial after the untuned one is a startup trial and none is pruned, so the two workers run the very
settings one worker runs, whichever worker takes which trial; one thread per process makes each training give the
same bits. (With TPE trials, a worker models the space from the trials ended so far, which differ with two workers:
the best is then comparable, not equal.)

PostgreSQL must be installed (`make setup` installs Debian's package): without it this test fails, it does not skip.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import one_thread_env

TRIALS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1, in a temporary folder; yields its URL."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert binaries, "PostgreSQL is not installed: apt-get install -y postgresql (`make setup` does it)"
    bin_dir = Path(binaries[-1]).parent
    # The server refuses to run as root: as root, run it as the package's `postgres` user, in a folder it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr or done.stdout}"

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tunelab")
        yield f"postgresql://postgres@127.0.0.1:{port}/tunelab"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, cwd="/")
        shutil.rmtree(folder, ignore_errors=True)


def _config(tiny_config, tmp_path: Path) -> Path:
    cfg = tiny_config("lora", train__epochs=1, tune={"pruning": False, "startup_trials": TRIALS - 1})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tune(config: Path, storage: str, output: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tunelab.cli", "tune", str(config), "--trials", str(TRIALS), "--storage",
               storage, "--search-only", f"output={output}"]
    return subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for p in processes:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
        outputs.append(out)
    return outputs


def _study(storage: str):
    import optuna

    from tunelab.tune import storage_url
    return optuna.load_study(study_name="lora", storage=storage_url(storage))  # postgresql:// through psycopg2


def _counted(study) -> list:
    return [t for t in study.get_trials() if not t.user_attrs.get("interrupted") and not t.user_attrs.get("surplus")]


def _check_shared(storage: str, reference, tmp_path: Path, config: Path) -> None:
    started = time.time()
    _finish([_tune(config, storage, tmp_path / f"worker{i}") for i in range(2)])
    seconds = time.time() - started
    study = _study(storage)
    trials = _counted(study)
    assert len(trials) == TRIALS and all(t.state.name == "COMPLETE" for t in trials), \
        [(t.number, t.state.name) for t in study.get_trials()]
    assert sorted(t.number for t in trials) == sorted({t.number for t in trials})
    settings = [t.params["learning_rate"] for t in trials]
    assert len(set(settings)) == len(settings), "a setting ran twice"
    assert sum(t.user_attrs.get("default", False) for t in trials) == 1, "the untuned trial ran more than once"
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, f"one worker ran every trial ({workers}): nothing was shared"
    # The single worker's trials, the same settings by number, the same values, the same best.
    ref = {t.number: (t.params, t.value) for t in _counted(reference)}
    mine = {t.number: (t.params, t.value) for t in trials}
    assert mine.keys() == ref.keys()
    for n in ref:
        assert mine[n][0] == ref[n][0], f"trial {n} drew another setting"
        assert mine[n][1] == pytest.approx(ref[n][1], abs=1e-6)
    assert study.best_trial.number == reference.best_trial.number
    assert study.best_trial.params == reference.best_trial.params
    print(f"{storage.split(':')[0]}: {TRIALS} trials by 2 workers in {seconds:.1f} s")


@pytest.mark.long(seconds=29)
def test_two_workers_share_one_study_on_postgresql_and_on_sqlite(tiny_config, tmp_path, postgres):
    config = _config(tiny_config, tmp_path)
    single = f"sqlite:///{tmp_path / 'single.db'}"
    started = time.time()
    _finish([_tune(config, single, tmp_path / "single")])
    print(f"single worker: {TRIALS} trials in {time.time() - started:.1f} s")
    reference = _study(single)
    assert len(_counted(reference)) == TRIALS

    _check_shared(postgres, reference, tmp_path, config)
    _check_shared(f"sqlite:///{tmp_path / 'shared.db'}", reference, tmp_path, config)


def test_an_unreachable_database_is_one_line(tiny_config, tmp_path):
    config = _config(tiny_config, tmp_path)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "tune", str(config), "--storage",
                           f"postgresql://nobody:secret@127.0.0.1:{_free_port()}/none", "--search-only"],
                          env=one_thread_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage postgresql://nobody@127.0.0.1:"), done.stderr
    assert "secret" not in done.stderr  # the password is not printed


def test_a_trial_whose_machine_stopped_beating_runs_again_on_another_worker(tiny_config, tmp_path, monkeypatch):
    # Another machine's RUNNING trial is not this machine's to judge (its pid cannot be checked): Optuna's heartbeat
    # fails it once stale, and the setting runs again here. Grace shortened from 120 s to 1 s for the test.
    import importlib

    import optuna

    from tunelab.settings import load_config
    tune = importlib.import_module("tunelab.tune")  # (`tunelab.tune` the attribute is the API's function)
    monkeypatch.setattr(tune, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tune, "HEARTBEAT_GRACE", 1)
    cfg = load_config(tiny_config("lora", train__epochs=1, tune={"pruning": False}))
    storage = tmp_path / "shared.db"
    tune.search(cfg, 1, storage, log=lambda _: None)  # the untuned trial
    study = optuna.load_study(study_name="lora", storage=tune._storage(storage))
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's note that workers use Study.optimize
        lost = study.ask()  # a trial a worker on another machine began, then the machine died
    tune.suggest(lost, tune.space_for(cfg))  # its setting drawn, as a worker draws it
    lost.set_user_attr("worker", "12345.0othermac")
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(2.5)

    result = tune.search(cfg, 3, storage, log=lambda _: None)
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    again = [t for t in trials if t.user_attrs.get("rerun_of") == lost.number]
    assert len(again) == 1 and again[0].params == lost.params and again[0].state.name == "COMPLETE"
    assert [r["number"] for r in result["trials"]] == [t.number for t in tune._counted(study)]
    assert len(result["trials"]) == 3 and lost.number not in [r["number"] for r in result["trials"]]




def _open_when_all_ready(barrier, path: str, results) -> None:
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    from tunelab.errors import TunelabError
    from tunelab.tune import _storage
    has_table = SQLiteDialect.has_table

    def slow_has_table(*args, **kwargs):  # widens the window between "no such table" and CREATE TABLE
        found = has_table(*args, **kwargs)
        time.sleep(0.05)
        return found

    SQLiteDialect.has_table = slow_has_table
    barrier.wait()
    try:
        _storage(path)
        results.put("ok")
    except TunelabError as e:
        results.put(str(e))


def test_workers_opening_one_new_sqlite_file_at_the_same_moment_all_open_it(tmp_path):
    """Two workers started together on a new SQLite file both created its tables: one failed with `table ...
    already exists` (seen in CI). Here three processes open a new file at the same instant, each checking for
    the tables slowly enough that all would find none. They are forked with tunelab and Optuna imported already,
    so that the barrier lines up the opening itself, not the imports."""
    import multiprocessing

    import optuna.storages  # noqa: F401  (imported once, before the fork)

    import tunelab.tune  # noqa: F401
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    path = str(tmp_path / "new.db")
    workers = [context.Process(target=_open_when_all_ready, args=(barrier, path, results)) for _ in range(3)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    assert outcomes == ["ok"] * 3, outcomes
