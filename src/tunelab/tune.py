"""Per-method hyper-parameter search with Optuna, on the validation split only.

Each trained method is compared at its own best settings rather than at one default: part of what a
comparison at defaults measures is the defaults. Optuna (Akiba et al. 2019, https://arxiv.org/abs/1907.10902)
draws settings with its TPE sampler (seeded by `train.seed`). The first trial is always the method's untuned
setting, so the best trial is never below it.

A search must cost a few runs, not one per trial. Three things see to it:
- Successive halving (Optuna's SuccessiveHalvingPruner, the rule of ASHA, Li et al. 2020,
  https://arxiv.org/abs/1810.05934): a trial goes on past a third of its first epoch, and past that epoch, only
  while it is among the best third of the trials that reached the same point (the best, for the first two). It
  judges a setting by its start, which can stop a slow starter that would have ended well; the untuned trial
  always runs to the end, so what a search returns is never below it.
- Those first-epoch judgements need evaluations within the epoch: the loop reports at each third of the first
  epoch (`first_epoch_reports`), without changing what it trains.
- The best trial's weights are kept (`<storage>.best/`), so that the run of the best setting, which alone
  predicts the test split, is that trial's model rather than a second training of it.

Trials live in an SQLite file: a search that was killed resumes where it stopped, and the trial it was running
is run again.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import shutil
import time
import warnings
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .config import TRAIN_PARAMS, RunConfig, _merge, differences
from .errors import TunelabError
from .methods import METHODS
from .pipeline import data_for, fit
from .runs import process_gone, this_process
from .settings import load_config
from .tasks import task_for
from .training.memory import PeakMemory

# Optuna is imported in the functions that use it: it is this module's alone, and `tunelab train` needs none of it.

LR_HALF_SPAN = 10 ** 0.75  # the learning rate is searched over 1.5 decades centred on the method's default
REPORTS_PER_EPOCH = 3  # the pruner's unit: a third of an epoch (reported within the first epoch only)
PRUNER = "successive halving at thirds of the first epoch and at each epoch, reduction factor 3"


def default_space(method: str) -> dict[str, dict[str, Any]]:
    """Learning rate log-uniform around the method's default, and the method's own parameters."""
    m = METHODS.get(method)
    lr = m.default_learning_rate
    return {"learning_rate": {"low": lr / LR_HALF_SPAN, "high": lr * LR_HALF_SPAN, "log": True},
            **{k: dict(v) for k, v in m.search_space.items()}}


def space_for(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The configured method's search space (`tune.space.<method>`, or its default) with the untuned
    setting included, since the first trial runs it."""
    space = {k: dict(v) for k, v in (cfg.tune.space.get(cfg.method.name) or default_space(cfg.method.name)).items()}
    for name, value in current_params(cfg, space).items():
        spec = space[name]
        if "choices" in spec and value not in spec["choices"]:
            spec["choices"] = [*spec["choices"], value]
        elif "choices" not in spec:
            spec["low"], spec["high"] = min(spec["low"], value), max(spec["high"], value)
    return space


def current_params(cfg: RunConfig, space: dict[str, Any]) -> dict[str, Any]:
    """The config's own values of the searched parameters: the untuned trial."""
    out = {}
    for name in space:
        if name == "learning_rate":
            out[name] = cfg.train.learning_rate or METHODS.get(cfg.method.name).default_learning_rate
        elif name in TRAIN_PARAMS:
            out[name] = getattr(cfg.train, name)
        else:
            out[name] = getattr(cfg.method.options, name)
    return {k: v for k, v in out.items() if v is not None}


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, spec["choices"])
        elif all(isinstance(spec[k], int) for k in ("low", "high")) and name != "learning_rate":
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def with_params(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A config dict with searched values set: train keys under `train`, the rest as method options."""
    train = {k: v for k, v in params.items() if k in TRAIN_PARAMS}
    options = {k: v for k, v in params.items() if k not in TRAIN_PARAMS}
    return _merge(config, {"train": train, "method": options})


def as_overrides(params: dict[str, Any]) -> list[str]:
    """`train.learning_rate=0.0012 method.r=16`: the best setting as command-line overrides."""
    return [f"{'train' if k in TRAIN_PARAMS else 'method'}.{k}={v:.4g}" if isinstance(v, float)
            else f"{'train' if k in TRAIN_PARAMS else 'method'}.{k}={v}" for k, v in params.items()]


def search(cfg: RunConfig, trials: int, storage: str | Path, *, minutes: float | None = None,
           keep_best: bool = False, kept: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search of `cfg.method` until `trials` trials have ended; returns `summary`.

    `storage` is an SQLite file, or a database URL (`postgresql://user@host/db`) that the same command on several
    machines shares: each worker runs trials until the study holds `trials` of them, none twice. With `keep_best`,
    each trial that beats every earlier one leaves its model in `kept` (default `kept_folder(storage)`)."""
    import optuna

    if METHODS.get(cfg.method.name).default_learning_rate is None:
        raise TunelabError(f"method {cfg.method.name} trains nothing, so there is nothing to tune; its own search "
                           f"(templates, demonstrations) runs in `tunelab train`")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = task_for(cfg)
    splits = data_for(cfg, task)
    metric = cfg.train.early_stopping.metric or task.default_metric
    direction = "minimize" if metric in task.lower_is_better else "maximize"
    space = space_for(cfg)
    study = _open_study(cfg, storage, direction, space, trials)
    kept = kept or kept_folder(Path(storage))
    base = cfg.to_dict()

    def objective(trial) -> float:
        trial.set_user_attr("worker", this_process())  # first: another worker must not take it for a dead one's
        if _surplus(study, trial, trials):  # other workers have started the last trials meanwhile
            trial.set_user_attr("surplus", True)
            study.stop()
            raise _Surplus()
        params = suggest(trial, space)
        trial_cfg = load_config(with_params(base, params))
        shown = ", ".join(as_overrides(params))
        log(f"trial {trial.number}: {shown}")
        started = time.time()

        def on_evaluation(epochs: float, value: float) -> None:
            trial.report(value, round(epochs * REPORTS_PER_EPOCH))
            trial.set_user_attr("epochs", round(epochs, 2))
            trial.set_user_attr("seconds", round(time.time() - started, 1))
            # After the last epoch the trial has cost all it will: pruning it then would only discard its result.
            if cfg.tune.pruning and epochs < trial_cfg.train.epochs and trial.should_prune():
                log(f"trial {trial.number}: pruned after {epochs_text(epochs)} ({metric} {value:.4f})")
                raise optuna.TrialPruned()

        try:
            with PeakMemory() as memory:
                adapted = fit(trial_cfg, splits, lambda line: None, on_evaluation=on_evaluation,
                              first_epoch_reports=REPORTS_PER_EPOCH if cfg.tune.pruning else 1)
        except TunelabError as e:  # a diverged learning rate or an impossible setting: that trial fails, not the search
            trial.set_user_attr("error", str(e))
            log(f"trial {trial.number}: failed: {e}")
            raise
        value, seconds = adapted.state.best_value, time.time() - started
        log(f"trial {trial.number}: validation {metric} {value:.4f} (best epoch {adapted.state.best_epoch}, "
            f"{seconds:.0f} s)")
        if keep_best and _beats_every_earlier(study, value):
            _keep(adapted, trial.number, seconds, memory, kept)
        return value

    remaining = trials - len(_ended(study))
    if remaining > 0:
        log(f"search of {cfg.method.name}: {remaining} of {trials} trials to run, on validation {metric} "
            f"({len(splits.validation)} examples); trials in {shown_storage(storage)}")
        study.optimize(objective, n_trials=remaining, timeout=minutes * 60 if minutes else None,
                       catch=(TunelabError, _Surplus), gc_after_trial=True)
    return summary(study, metric)


class _Surplus(Exception):
    """A trial beyond the number asked, begun because workers started trials at the same moment; it runs nothing."""


def _surplus(study, trial, trials: int) -> bool:
    """Whether `trials` trials of lower number (ended or running, by any worker) were there before this one."""
    return len([t for t in _counted(study) if t.number < trial.number]) >= trials


def _counted(study) -> list:
    """The trials that count towards the number asked: begun, and neither one a kill interrupted (its setting
    runs again) nor a surplus one."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    replaced = {t.user_attrs.get("rerun_of") for t in trials}
    return [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted")
            and not t.user_attrs.get("surplus") and t.number not in replaced]


def storage_url(storage: str | Path) -> str:
    """A database URL as given (`postgresql://...`, `sqlite:///...`); a path is an SQLite file. A bare
    `postgresql://` goes through psycopg2 (SQLAlchemy 2.1's default driver for it is psycopg 3)."""
    url = str(storage)
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def shown_storage(storage: str | Path) -> str:
    """For messages: the URL without its password."""
    url = str(storage)
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return url


class TrialSeeded:
    """Optuna's sampler for trial n: random draws seeded by (seed, n) for the first `startup` trials after the
    untuned one, TPE seeded by (seed, n) after them. The sampler is made afresh for each trial, so a trial's
    startup draw depends on its number alone, not on which process draws it or what it drew before: the workers
    of a shared study draw the startup trials one worker would (a per-process seeded sampler would draw the same
    values in every worker)."""

    def __new__(cls, seed: int, startup: int):
        import optuna

        class Sampler(optuna.samplers.BaseSampler):
            def __init__(self):
                self.inner = optuna.samplers.RandomSampler(seed=seed)

            def before_trial(self, study, trial):
                trial_seed = (seed * 1_000_003 + trial.number) % 2**32
                self.inner = (optuna.samplers.RandomSampler(seed=trial_seed) if trial.number <= startup else
                              optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=0))
                self.inner.before_trial(study, trial)

            def infer_relative_search_space(self, study, trial):
                return self.inner.infer_relative_search_space(study, trial)

            def sample_relative(self, study, trial, search_space):
                return self.inner.sample_relative(study, trial, search_space)

            def sample_independent(self, study, trial, param_name, param_distribution):
                return self.inner.sample_independent(study, trial, param_name, param_distribution)

            def after_trial(self, study, trial, state, values):
                self.inner.after_trial(study, trial, state, values)

        return Sampler()


def epochs_text(epochs: float) -> str:
    """`a third of epoch 1`, `epoch 2`: where a trial stopped."""
    if epochs == int(epochs):
        return f"epoch {int(epochs)}"
    return f"{round(epochs * REPORTS_PER_EPOCH)}/{REPORTS_PER_EPOCH} of epoch 1"


def kept_folder(storage: Path) -> Path:
    """Where a search keeps the model of its best trial: `tuning/lora.db` -> `tuning/lora.best/`."""
    return storage.with_suffix(".best")


def _beats_every_earlier(study, value: float) -> bool:
    """Better than every complete trial so far; a tie leaves the earlier trial the best (as `summary` does)."""
    from optuna.trial import TrialState
    done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return True
    return value > max(done) if study.direction.name == "MAXIMIZE" else value < min(done)


def _keep(adapted, number: int, seconds: float, memory, folder: Path) -> None:
    """Save a trial's model and training state, replacing the previous best's only once it is whole."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    adapted.method.save(partial / "model")
    adapted.tokenizer.save_pretrained(partial / "model")
    (partial / "trial.json").write_text(json.dumps({
        "number": number, "state": asdict(adapted.state), "fit_seconds": round(seconds, 2),
        "peak_rss_mb": memory.peak_mb, "device_peak_mb": memory.device_peak_mb,
        # Counted as trained: a reloaded model does not say which weights trained (peft loads its adapters frozen).
        "parameters": adapted.parameters(),
        "trained_head_modules": adapted.trained_heads}))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def kept_trial(storage: Path) -> dict[str, Any] | None:
    """The kept best trial (`trial.json`), or None."""
    path = kept_folder(storage) / "trial.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _open_study(cfg: RunConfig, storage: str | Path, direction: str, space: dict[str, Any], trials: int):
    import optuna
    if "://" not in str(storage):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    startup = cfg.tune.startup_trials or max(1, min(10, trials // 2))  # TPE models the space after these
    options = {"sampler": TrialSeeded(cfg.train.seed, startup),
               "pruner": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)}
    rdb = _storage(storage)
    # Of workers starting together on one database, exactly one creates the study; it alone writes the
    # fingerprint and enqueues the untuned trial, which would otherwise run once per worker.
    try:
        study = optuna.create_study(study_name=cfg.method.name, storage=rdb, direction=direction, **options)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.method.name, storage=rdb, **options)
        created = False
    # A search resumes only with the config and space it began with: its trials would not compare otherwise.
    # How many trials, the comparison's seeds, and where runs are written may change between sessions and
    # workers of one search; the rest may not.
    fingerprint = {"config": {k: v for k, v in cfg.to_dict().items() if k not in ("tune", "compare")},
                   "space": space, "pruner": PRUNER if cfg.tune.pruning else None}
    had = study.user_attrs.get("fingerprint")
    for _ in range(100):  # a worker that loaded the study as another created it: the fingerprint follows
        if had is not None or created:
            break
        time.sleep(0.1)
        had = optuna.load_study(study_name=cfg.method.name, storage=rdb).user_attrs.get("fingerprint")
    if had is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.enqueue_trial(current_params(cfg, space), user_attrs={"default": True})
    else:
        changed = differences(_where_free(had), _where_free(_plain(fingerprint)))
        if changed:
            raise TunelabError(f"{shown_storage(storage)} holds a search of {cfg.method.name} with another config "
                               f"({'; '.join(changed[:3])}); delete it to start over, or choose another --storage")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # Left running by a killed process of this machine: mark it failed and run its setting again, so that a
        # kill costs only the trial it interrupted. Another machine's trial is its worker's (or, once that stops
        # beating, Optuna's heartbeat fails it and `_rerun` enqueues it).
        worker = t.user_attrs.get("worker")
        # (No worker yet: a trial that an older tunelab ran, or one a worker has just begun and is naming.)
        orphan = worker is None and (datetime.now() - t.datetime_start).total_seconds() > 60
        if orphan or (worker is not None and process_gone(worker)):
            _rerun(study, t)
    return study


def _storage(storage: str | Path):
    """Optuna's storage for `storage`, with a heartbeat: a trial whose worker stopped beating for
    `HEARTBEAT_GRACE` seconds (a killed machine) is failed and its setting run again by another worker."""
    import optuna
    import sqlalchemy.exc
    for attempt in range(5):
        try:
            with warnings.catch_warnings(), _one_creator(storage):  # the heartbeat is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage_url(storage), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=HEARTBEAT_GRACE,
                    heartbeat_stale_trial_callback=lambda study, trial: _rerun(study, trial, fail=False))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * (attempt + 1))  # two workers creating the tables of a new database at once
        except sqlalchemy.exc.OperationalError as e:
            raise TunelabError(f"--storage {shown_storage(storage)}: cannot open the database "
                               f"({str(e.orig).strip().splitlines()[0] if e.orig else e}); check the URL, that the "
                               f"server runs and that this user may connect") from None
        except ImportError:
            raise TunelabError(f"--storage {shown_storage(storage)}: the database's Python driver is not "
                               f"installed; pip install psycopg2-binary for postgresql:// URLs") from None
    raise TunelabError(f"--storage {shown_storage(storage)}: the database's tables could not be created; try again")


@contextlib.contextmanager
def _one_creator(storage: str | Path):
    """For an SQLite file, one process at a time opens it through Optuna, which creates the tables of a new file:
    two workers started together both found no tables, and the second failed on `table ... already exists` (SQLite
    raises it as an OperationalError, not the IntegrityError a server gives, which `_storage` retries). The lock is
    `flock` on the file itself, which SQLite's own (fcntl) locks do not see; the kernel drops it if the process dies.
    A server database (PostgreSQL) needs none: its concurrent creation is retried."""
    url = storage_url(storage)
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        yield
        return
    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:  # an empty file is a new database to SQLite
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


HEARTBEAT_SECONDS, HEARTBEAT_GRACE = 30, 120


def _rerun(study, t, fail: bool = True) -> None:
    """Enqueue the setting of trial `t` again, and mark `t` interrupted (failed, not counted). Optuna's heartbeat
    has failed its stale trials already, which then take no mark: the enqueued trial names them (`rerun_of`)."""
    import optuna
    attrs = {k: v for k, v in t.user_attrs.items() if k == "default"}
    if fail:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    else:
        attrs["rerun_of"] = t.number
    study.enqueue_trial(t.params, user_attrs=attrs)


def _where_free(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint without the keys that only say where results are written (each worker its own)."""
    config = {k: v for k, v in fingerprint.get("config", {}).items() if k not in ("output", "name")}
    return {**fingerprint, "config": config}


def _plain(value: Any) -> Any:
    """As stored in the study (JSON): tuples become lists."""
    return json.loads(json.dumps(value))


def _ended(study) -> list:
    """Trials that count towards the number asked: every ended trial but those a kill interrupted."""
    from optuna.trial import TrialState
    return [t for t in _counted(study) if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


def summary(study, metric: str) -> dict[str, Any]:
    """The trials as plain data (for comparison.json and the report)."""
    from optuna.trial import TrialState
    rows = []
    for t in _counted(study):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "value": t.value if t.state == TrialState.COMPLETE else last,
                     "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds"),
                     "default": bool(t.user_attrs.get("default")), "error": t.user_attrs.get("error")})
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    best = min(complete, key=lambda r: (sign * r["value"], r["number"])) if complete else None
    default = next((r for r in rows if r["default"]), None)
    return {"metric": metric, "direction": study.direction.name.lower(), "trials": rows,
            "best": {k: best[k] for k in ("number", "params", "value")} if best else None,
            "default": {"params": default["params"], "value": default["value"] if default["state"] == "COMPLETE"
                        else None} if default else None,
            "seconds": round(sum(r["seconds"] or 0 for r in rows), 1)}


def load_summary(storage: Path, method: str, metric: str) -> dict[str, Any]:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return summary(optuna.load_study(study_name=method, storage=storage_url(storage)), metric)


def trials_table(result: dict[str, Any]) -> list[str]:
    """The trials as text lines, best first."""
    rows = sorted(result["trials"], key=lambda r: (r["state"] != "COMPLETE", r["value"] is None,
                                                   -(r["value"] or 0) if result["direction"] == "maximize"
                                                   else (r["value"] or 0)))
    out = []
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        params = " ".join(as_overrides(r["params"]))
        tags = (" (untuned setting)" if r["default"] else "") + (f" ({r['error']})" if r["error"] else "")
        out.append(f"  trial {r['number']:>2}  {r['state'].lower():8} {result['metric']} {value:7}  "
                   f"epochs {r['epochs'] or 0:<4g}  {r['seconds'] or 0:.0f} s  {params}{tags}")
    return out


__all__ = ["search", "summary", "load_summary", "default_space", "space_for", "with_params", "as_overrides"]
