"""The `tunelab` command. User mistakes end with one line on stderr and exit status 2.

Each command imports what it runs inside its own function, on purpose: `tunelab --help`, `tunelab config` and a
mistyped command answer without loading torch and transformers (seconds). The layers contract in pyproject.toml
still sees those imports, and no cycle hides behind them."""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import errno
import json
import os
import signal
import sys
import threading

from .errors import Terminated, TunelabError
from .runs import die_with_parent

EXAMPLES = """examples:
  tunelab train configs/sentiment/lora.yaml
  tunelab train configs/sentiment/lora.yaml method.name=full train.epochs=5
  tunelab eval runs/rotten_tomatoes-minilm-lora --data other.csv
  tunelab predict runs/rotten_tomatoes-minilm-lora --input in.jsonl --output out.jsonl
  tunelab export runs/rotten_tomatoes-minilm-lora exported/sentiment --merge
  tunelab serve runs/rotten_tomatoes-minilm-lora sentiment=runs/other --port 8000
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunelab", description="Adapt a pretrained language model to your task with "
                                "prompt engineering, PEFT or full fine-tuning, and measure which to use.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train (or fit) one method; writes runs/<name>/",
                       description="Train or fit the configured method and write a run folder with the resolved "
                       "config, metrics, history, test predictions and the saved model/adapter/prompt.",
                       epilog="Overrides are dotted keys: train.epochs=5 method.name=full data.max_examples=2000. "
                       "`tunelab config` lists every key.", formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the config")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name "
                   "(only once the new run has finished)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run (a crash, a kill, Ctrl-C) "
                   "from its checkpoint in .NAME.checkpoint/ beside the run folder, exactly as if it had not stopped; "
                   "the config must be the same")

    e = sub.add_parser("eval", help="metrics of a trained run on its test split or on a file")
    e.add_argument("run", help="run folder (runs/NAME)")
    e.add_argument("--data", help="a file with the same columns as the training data (default: the run's test split)")

    pr = sub.add_parser("predict", help="predictions of a trained run for a file of inputs")
    pr.add_argument("run", help="run folder (runs/NAME)")
    pr.add_argument("--input", required=True, help=".csv/.jsonl/.json/.parquet file with the text column")
    pr.add_argument("--output", required=True, help="JSON Lines file to write (never overwritten without --overwrite)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    x = sub.add_parser("export", help="a trained run as a folder that plain transformers/peft load",
                       description="Write a finished run as a folder that loads without tunelab: a PEFT adapter "
                       "folder (LoRA/IA3), or with --merge a plain Hugging Face folder with the adapter merged; full "
                       "runs as a plain folder; prompt runs as prompt.json. Labels, tokenizer, a base model name "
                       "another machine can resolve, and a model card (README.md) go with it.")
    x.add_argument("run", help="run folder (runs/NAME)")
    x.add_argument("out", help="folder to write (never overwritten without --overwrite)")
    x.add_argument("--merge", action="store_true", help="merge a LoRA/IA3 adapter into the base weights: a plain "
                   "folder for AutoModelFor*.from_pretrained and pipeline()")
    x.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    sv = sub.add_parser("serve", help="an HTTP service answering for trained runs (FastAPI + uvicorn)",
                        description="Serve finished runs over HTTP: POST /v1/predict (labels and scores, answers, "
                        "generated text, as `tunelab predict` writes them), POST /v1/chat/completions (OpenAI-style, "
                        "generation runs), GET /v1/models, GET /health, the OpenAPI schema at /docs. Each base "
                        "model is loaded once: LoRA/IA3 runs on it become named adapters of one model. Requests "
                        "that arrive together are answered in one batch.")
    sv.add_argument("runs", nargs="+", metavar="RUN", help="run folder, or NAME=RUN to serve it as NAME (default: "
                    "the folder's name)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                    "only; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sv.add_argument("--max-batch", type=int, default=16, help="inputs a batch collects from requests that arrive "
                    "together (default 16; 1: one request at a time)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests "
                    "(default 5 ms)")
    sv.add_argument("--max-inputs", type=int, default=256, help="inputs one request may send (default 256)")
    sv.add_argument("--max-chars", type=int, default=20000, help="characters one input may hold (default 20000)")

    u = sub.add_parser("ui", help="a local web interface: configure, launch, watch and compare runs (Gradio)",
                       description="Serve a web page to set up a comparison (upload a file, map its columns, pick "
                       "the model, task and methods, see the YAML config), estimate it, launch it and watch each "
                       "method train (curves, log, stop and resume), read the results of every comparison in the "
                       "output folder, and try the trained runs side by side. Offline; this machine only by "
                       "default.")
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    u.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    u.add_argument("--output", default="comparisons", help="parent folder of the comparisons it lists and "
                   "launches (default comparisons)")

    c = sub.add_parser("compare", help="run several methods on the same splits; table, report and advice",
                       description="Train each method on the same splits with the same seed (one run folder each "
                       "under comparisons/NAME/runs/, or under the config's output: folder), write report.html and "
                       "report.md, and recommend a method from the validation metric. Finished runs are reused when "
                       "repeated.")
    c.add_argument("config", help="YAML config file (its `methods:` block may set per-method options)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the config")
    c.add_argument("--methods", help="comma-separated, e.g. prompt,lora,adapter,full (default: every method that "
                   "fits the task and model)")
    c.add_argument("--name", help="comparison folder name (default: <data>-<model>)")
    c.add_argument("--output", help="parent folder of comparisons (default: the config's `output:` when it sets "
                   "one, else comparisons)")
    c.add_argument("--overwrite", action="store_true", help="retrain runs whose config changed")
    c.add_argument("--parallel", type=int, default=1, metavar="N", help="train N methods at once, the CPU cores "
                   "split between them (default 1: one after another)")
    c.add_argument("--devices", help="comma-separated GPU ids, e.g. 0,1: one method at a time on each")
    c.add_argument("--max-minutes", type=float, help="budget: training time per method")
    c.add_argument("--max-memory", type=float, help="budget: peak memory per method, in MB")
    c.add_argument("--seeds", type=int, help="training runs per trained method, seeds train.seed, train.seed+1, …; "
                   "the table shows mean ± standard deviation (config: compare.seeds)")
    c.add_argument("--tune", type=int, metavar="N", help="search each trained method's hyper-parameters in N trials "
                   "first (Optuna, validation split only) and compare the methods at their best settings; the "
                   "folder's default name gets '-tuned' (config: tune.trials)")
    c.add_argument("--tune-minutes", type=float, help="time budget of each method's search (config: tune.minutes)")

    tu = sub.add_parser("tune", help="search one method's hyper-parameters on the validation split, then train "
                        "the best", description="Search the configured method's learning rate and own options with "
                        "Optuna (TPE, seeded by train.seed; trials that fall below the median after an epoch are "
                        "pruned), on the validation split only; then train the best setting as a run folder, which "
                        "alone predicts the test split. Trials are stored in an SQLite file (or a shared database, "
                        "--storage): the same command resumes an interrupted search. The space is `tune.space.<method>` (`tunelab config`).")
    tu.add_argument("config", help="YAML config file")
    tu.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the config")
    tu.add_argument("--trials", type=int, default=8, help="trials to run in all, the untuned setting first "
                    "(default 8)")
    tu.add_argument("--minutes", type=float, help="time budget: no trial starts after this many minutes")
    tu.add_argument("--storage", help="SQLite file of the trials (default: <output>/<name>.tuning.db), or a "
                    "database URL (postgresql://USER:PASSWORD@HOST/DB, with psycopg2-binary installed) that the same "
                    "command on several machines shares: together they run --trials trials, none twice")
    tu.add_argument("--search-only", action="store_true", help="search and print the best setting; train no run")
    tu.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")

    for verb, text in (("recommend", "suggest a method before training, from estimates and the data size"),
                       ("estimate", "estimate each method's trainable weights, peak memory and training time")):
        e = sub.add_parser(verb, help=text, description=text + ": a few timed training steps per method (in a "
                           "process of its own), no full run.")
        e.add_argument("config", help="YAML config file")
        e.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
        e.add_argument("--methods", help="comma-separated (default: every method that fits)")
        e.add_argument("--max-minutes", type=float, help="budget: training time per method")
        e.add_argument("--max-memory", type=float, help="budget: peak memory per method, in MB")

    r = sub.add_parser("report", help="rebuild report.html and report.md of a comparison folder")
    r.add_argument("folder", help="comparisons/NAME")

    sub.add_parser("datasets", help="the built-in datasets and where they come from")
    sub.add_parser("models", help="the built-in model aliases and where they come from")
    sub.add_parser("methods", help="the registered methods and their options")
    c = sub.add_parser("config", help="every config key with its default and meaning")
    c.add_argument("config", nargs="?", help="print this file's resolved config instead")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the built-ins never need a hub; fail fast instead of waiting
    die_with_parent()  # a comparison's method dies with the comparison, even when that is killed with SIGKILL
    parser = _parser()
    # Overrides may come after options too (`compare cfg.yaml --methods lora train.epochs=1`), which plain
    # argparse refuses once the positional list has ended.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.parse_args(argv)  # the usual usage error, exit 2
        args.overrides = [*(args.overrides or []), *extra]
    # SIGTERM (`kill`, a job scheduler, a CI timeout) unwinds like Ctrl-C, so the run's partial folder is removed.
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return COMMANDS[args.command](args) or 0
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        # The run's partial folder is gone already (its writer cleans up on any error); checkpoints stay.
        print(f"error: the disk is full ({e.filename or 'while writing'}): nothing half-written was left; free "
              f"some space, then run the same command again (with --resume where a checkpoint was kept)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no half-written output was left", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; no half-written output was left", file=sys.stderr)
        return 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The `tunelab` command (and `python -m tunelab.cli`): `main`, then the exit Python makes, less its teardown.

    Tearing down an interpreter that has imported torch and transformers took 1.2 s on 2 cores after every
    command (freeing each module's objects, one by one), five times in `make demo`: its four methods' processes
    and `compare` itself. So, once the command has returned, this does what that exit does and matters (wait
    for non-daemon threads, run the atexit handlers, which close logging and tracking, flush the streams), then
    ends the process. Files are closed by the code that writes them: a run's folder is complete before `main`
    returns. An uncaught exception takes Python's usual way out, traceback included."""
    code = main()
    for thread in threading.enumerate():  # as the interpreter's exit does, before the atexit handlers
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: what could not be written is lost either way
            pass
    os._exit(code)


def _terminated(signum, frame) -> None:
    raise Terminated()


def _train(args) -> None:
    from .api import train
    train(args.config, args.overrides, overwrite=args.overwrite, resume=args.resume)


def _eval(args) -> None:
    from .api import evaluate
    metrics = evaluate(args.run, args.data)
    print(json.dumps(metrics, indent=2))


def _predict(args) -> None:
    from .api import predict
    n = predict(args.run, args.input, args.output, overwrite=args.overwrite)
    print(f"wrote {n} predictions to {args.output}")


def _export(args) -> None:
    from .export import export
    export(args.run, args.out, merge=args.merge, overwrite=args.overwrite)


def _serve(args) -> None:
    for flag, value in (("--max-batch", args.max_batch), ("--max-inputs", args.max_inputs),
                        ("--max-chars", args.max_chars)):
        if value < 1:
            raise TunelabError(f"{flag} must be at least 1, got {value}")
    if args.max_wait_ms < 0:
        raise TunelabError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms}")
    from .serve import Limits, serve
    try:
        serve(args.runs, args.host, args.port, Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                                      max_inputs=args.max_inputs, max_chars=args.max_chars))
    except (KeyboardInterrupt, Terminated):  # Ctrl-C or `kill`: how a service is meant to stop, not a failure
        print("stopped serving")


def _one_process(command: str) -> None:
    """`compare` and `tune` start processes of their own: under torchrun each process would run the whole
    command, and its children would inherit the rendezvous meant for the launcher's processes."""
    from .training.distributed import launched
    if launched() > 1:
        raise TunelabError(f"`tunelab {command}` runs in one process and starts its own; launch it without torchrun "
                           f"or accelerate (data-parallel training is `torchrun ... tunelab train CONFIG`)")


def _ui(args) -> None:
    from .ui import ui
    try:
        ui(args.host, args.port, args.output)
    except (KeyboardInterrupt, Terminated):  # Ctrl-C or `kill`: how a page's server is meant to stop
        print("stopped serving")


def _compare(args) -> None:
    _one_process("compare")
    from .comparison import compare
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    overrides = list(args.overrides or [])
    for key, value in (("compare.seeds", args.seeds), ("tune.trials", args.tune), ("tune.minutes", args.tune_minutes)):
        if value is not None:
            overrides.append(f"{key}={value}")
    compare(args.config, methods, overrides, output=args.output, name=args.name, overwrite=args.overwrite,
            max_minutes=args.max_minutes, max_memory_mb=args.max_memory, parallel=args.parallel,
            devices=[d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None)


def _tune(args) -> None:
    _one_process("tune")  # several machines share a search through --storage instead
    from .api import tune
    if args.trials < 1:
        raise TunelabError(f"--trials must be at least 1, got {args.trials}")
    tune(args.config, args.overrides, trials=args.trials, minutes=args.minutes, storage=args.storage,
         search_only=args.search_only, overwrite=args.overwrite)


def _estimate(args, recommend: bool = False) -> None:
    from .estimation import estimate, format_estimates
    from .recommend import recommend_estimated
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    result = estimate(args.config, methods, args.overrides)
    for line in format_estimates(result):
        print(line)
    if recommend:
        budget = {"max_minutes": args.max_minutes, "max_memory_mb": args.max_memory}
        advice = recommend_estimated(result["methods"], result["n_train"], result["n_classes"], budget)
        print(f"recommendation: {advice['text']}")
        print("after training, `tunelab compare` measures instead of estimating")


def _report(args) -> None:
    from .report import write_report
    html, md = write_report(args.folder)
    print(f"wrote {html} and {md}")


def _datasets(args) -> None:
    from .data import DATASETS
    for name, d in DATASETS.items():
        print(f"{name:16} {d.task:15} {d.description}\n{'':32} from {d.origin}")


def _models(args) -> None:
    from .models import MODELS
    for name, m in MODELS.items():
        print(f"{name:14} {m.family:8} {m.description}\n{'':23} from {m.origin}")


def _methods(args) -> None:
    from .methods import METHODS
    from .typed import docs
    for name, m in METHODS.items():
        print(f"{name:8} [{m.family}] {m.description}; tasks: {', '.join(m.task_names())}")
        for f in dataclasses.fields(m.Options):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"    method.{f.name} = {default!r}: {docs(m.Options)[f.name]}")


def _config(args) -> None:
    import yaml

    from .config import RunConfig
    from .settings import load_config
    from .tasks import TASKS
    if args.config:
        print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(), sort_keys=False))
        return
    _print_fields(RunConfig, "")
    for name, task in TASKS.items():  # each task with options contributes its own block
        if task.Options is not None:
            print(f"{name}: {task.options_doc}")
            _print_fields(task.Options, f"{name}.")


def _print_fields(cls, prefix: str) -> None:
    from .typed import docs
    for f in dataclasses.fields(cls):
        if not f.init:  # filled from other blocks (the tasks' options)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "method":
            print(f"{prefix}method.name = 'lora': {docs(cls)[f.name]} Options: `tunelab methods`.")
        elif dataclasses.is_dataclass(default):
            print(f"{prefix}{f.name}: {docs(cls)[f.name]}")
            _print_fields(type(default), f"{prefix}{f.name}.")
        else:
            print(f"{prefix}{f.name} = {default!r}: {docs(cls)[f.name]}")


COMMANDS = {"train": _train, "tune": _tune, "compare": _compare, "estimate": _estimate,
            "recommend": lambda args: _estimate(args, recommend=True), "report": _report, "eval": _eval,
            "predict": _predict, "export": _export, "serve": _serve, "ui": _ui, "datasets": _datasets, "models": _models,
            "methods": _methods, "config": _config}


if __name__ == "__main__":
    run()
