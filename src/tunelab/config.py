"""The one config's typed blocks: task, model, data, method, training, comparison, search — one documented
field each (`tunelab config` prints them), with the checks of single fields.

A config comes from a YAML file plus dotted command-line overrides (`train.epochs=5`), read and merged here.
`settings.load_config` builds it and checks it against the parts that define names (methods, tasks, datasets,
models); this module imports none of them. Every problem (unknown key, wrong type, out-of-range value, unknown
name) is collected into one `ConfigError`, so a user fixes the file in one pass.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .typed import fraction, non_negative, option, positive, to_dict


@dataclass
class SplitConfig:
    validation: float = option(0.1, "Fraction of the examples held out for validation (model selection).", fraction)
    test: float = option(0.1, "Fraction held out for the final test; never used for a choice.", fraction)
    seed: int = option(0, "Seed of the stratified shuffle; the same seed gives the same splits for every method. "
                       "Examples with a group (a Bible book, a chatbot question) are split by group: a group "
                       "never straddles two splits.")


@dataclass
class DataConfig:
    source: str = option("rotten_tomatoes", "A built-in dataset name (`tunelab datasets`) or a path to a "
                         ".csv, .jsonl, .json or .parquet file, or a saved `datasets` folder.")
    columns: dict[str, str] = option(doc="Which file column plays which role: `text`, `label`, optional "
                                     "`text_pair`; for generation `prompt` and `response`, or `source` and "
                                     "`target`, or `messages` (a list of {role, content}; the last assistant "
                                     "message is the answer), found by name where the file uses these; for "
                                     "extractive_qa rows `question`, `context` and `answers` (SQuAD .json files "
                                     "need none).",
                                     factory=lambda: {"text": "text", "label": "label"})
    labels: list[str] | None = option(None, "The label set, in order. Unset: the sorted labels found in the "
                                      "data. Set: any other label is an error.")
    validation_file: str | None = option(None, "A separate validation file; then no validation split is cut.")
    test_file: str | None = option(None, "A separate test file; then no test split is cut.")
    split: SplitConfig = option(doc="How one file is split.", factory=SplitConfig)
    max_examples: int | None = option(None, "Keep a stratified subset of this many examples (before splitting).",
                                      positive)
    max_length: int = option(128, "Longest input in tokens; longer texts are truncated.", positive)
    languages: str | None = option(None, "`bible_parallel` only: the language pair, source-target, e.g. fr-de "
                                   "(`tunelab datasets` lists the languages). Unset: en-fr.")


@dataclass
class EarlyStoppingConfig:
    metric: str | None = option(None, "Validation metric to watch (`f1`, `accuracy`, `loss`, `mse` …). "
                                "Unset: the task's main metric.")
    patience: int = option(2, "Stop after this many evaluations without improvement; 0 turns it off.",
                           non_negative)


@dataclass
class TrainConfig:
    epochs: int = option(3, "Passes over the training split (early stopping may end sooner).", positive)
    batch_size: int = option(16, "Examples per forward pass in training; an optimisation step takes "
                             "batch_size × gradient_accumulation_steps.", positive)
    gradient_accumulation_steps: int = option(1, "Forward passes of `batch_size` examples whose gradients add up "
                                              "to one optimisation step: the update of a batch this many times "
                                              "larger, in the memory of one pass. Each pass is weighted by its "
                                              "targets (answer tokens for generation), so the update is the "
                                              "large batch's.", positive)
    eval_batch_size: int = option(64, "Examples per forward pass when evaluating and predicting.", positive)
    learning_rate: float | None = option(None, "Peak learning rate. Unset: the method's own default "
                                         "(full 5e-5, lora 5e-4, adapter 1e-3).", positive)
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and LayerNorm).", non_negative)
    warmup_ratio: float = option(0.1, "Share of the steps spent warming the learning rate up from 0.", fraction)
    scheduler: Literal["linear", "cosine", "constant"] = option("linear", "Learning-rate decay after warm-up.")
    dropout: float | None = option(None, "Override the model's dropout rates. Unset: keep the model's.", fraction)
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this; 0 turns clipping off.", non_negative)
    early_stopping: EarlyStoppingConfig = option(doc="Stop when the validation metric stops improving; the best "
                                                 "weights are restored at the end.", factory=EarlyStoppingConfig)
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "Compute precision. `auto`: bf16 autocast where "
                                                        "the GPU supports it or the CPU runs it faster than fp32 "
                                                        "(timed once), else fp32.")
    seed: int = option(0, "Seed of initialisation, shuffling and dropout.")
    log_every: int = option(10, "Record the training loss every this many steps.", positive)
    group_by_length: bool = option(True, "Batch training inputs of similar length together (shuffled in groups of "
                                   "50 batches), as Trainer's option of that name: less padding, faster epochs on "
                                   "texts of mixed length (1.6x on Rotten Tomatoes; `make bench`). Off: batches "
                                   "drawn purely at random.")
    gradient_checkpointing: bool = option(False, "Keep only each layer's input during the forward pass and "
                                          "recompute the rest in the backward pass, as Trainer's option of that "
                                          "name: less memory for longer sequences or larger batches, slower steps.")
    fsdp: bool = option(False, "Shard the weights, gradients and optimizer state over the processes of a "
                        "data-parallel run (FSDP2, each transformer block and then the root), so that full "
                        "fine-tuning of a model that does not fit one device can run: `torchrun "
                        "--nproc_per_node N tunelab train CONFIG train.fsdp=true`. `accelerate launch` with "
                        "`distributed_type: FSDP` (configs/distributed/fsdp.yaml) sets it. `method: full` only; the "
                        "run trains, evaluates and saves as without it (the saved model is the whole weights).")
    on_nonfinite: Literal["stop", "skip"] = option("stop", "What a step whose loss or gradients are not finite "
                                                   "(NaN, inf) does: `stop` the run with the step named, or `skip` "
                                                   "its update (counted in metrics.json's skipped_steps) and go on.")
    max_skipped_in_a_row: int = option(10, "With on_nonfinite: skip, stop once this many steps in a row were "
                                       "skipped: the run is diverging, not hitting one bad batch.", positive)
    checkpoint_every: int = option(200, "Save a checkpoint every this many steps, and at each epoch's end, in "
                                   "`.NAME.checkpoint/` beside the run folder, so that `tunelab train ... --resume` "
                                   "continues an interrupted run exactly; it is removed when the run is written. "
                                   "0: no checkpoints.", non_negative)
    keep_checkpoints: int = option(2, "Complete checkpoints kept: the newest as `.NAME.checkpoint/`, the ones before "
                                   "it as `.NAME.checkpoint.1/` …; a resume whose newest is damaged (a truncated "
                                   "file) falls back to the one before.", positive)
    report_to: list[Literal["tensorboard", "mlflow"]] = option(
        doc="Experiment trackers that follow the run: `tensorboard` (event files in the run folder's `tensorboard/`; "
            "`tensorboard --logdir <output>`) and `mlflow` (a run in the store MLFLOW_TRACKING_URI names, or else in "
            "`<output>/mlflow.db` with artefacts in `<output>/mlartifacts`; a comparison's store is its own folder, "
            "where each method's run sits under a parent run named after the comparison). Both receive the config "
            "as parameters, the training loss and learning rate every log_every steps, each epoch's validation "
            "metrics, and the final validation and test metrics; MLflow also keeps the run folder as artefacts. A "
            "store that cannot be reached ends the command before training; a tracker failing later is dropped "
            "with a warning and the run goes on. Empty: none.", factory=list)


def _level(v: float) -> str | None:
    return None if 0.5 <= v < 1 else "must be at least 0.5 and below 1, e.g. 0.9 for 90% intervals"


def _enough_resamples(v: int) -> str | None:
    return None if v >= 100 else "must be at least 100 (1,000 or more for stable interval ends)"


@dataclass
class CompareConfig:
    """How `tunelab compare` measures: training seeds and the confidence of its figures."""
    seeds: int = option(1, "Training runs per trained method, with seeds train.seed, train.seed+1, … (initialisation, "
                        "dropout, data order; the split stays fixed). The table shows the mean ± standard deviation "
                        "over seeds and the recommendation uses the mean. `--seeds N` sets it.", positive)
    confidence: float = option(0.9, "Level of the bootstrap intervals on every figure and of the paired intervals "
                               "that decide ties.", _level)
    resamples: int = option(1000, "Bootstrap resamples of the validation and test examples (the same resamples "
                            "for every method, so differences are paired).", _enough_resamples)


@dataclass
class TuneConfig:
    """Per-method hyper-parameter search with Optuna (`tunelab tune`, `tunelab compare --tune N`)."""
    trials: int = option(0, "Trials per trained method in `tunelab compare` (0: no search; `--tune N` sets it). "
                         "The first trial is the method's untuned setting, so the search never ends below it.",
                         non_negative)
    minutes: float | None = option(None, "Time budget of one method's search in minutes (`--tune-minutes`); "
                                   "trials stop being started once it is spent.", positive)
    pruning: bool = option(True, "Stop a trial after an epoch whose validation metric is below the median of "
                           "earlier trials at that epoch (Optuna's MedianPruner; the first two trials always run).")
    startup_trials: int | None = option(None, "Trials drawn at random before TPE models the space (the untuned "
                                        "first trial not counted). Each is drawn from train.seed and its trial "
                                        "number alone, so several workers sharing one study (`--storage "
                                        "postgresql://...`) draw the very ones a single worker would. Unset: half "
                                        "the trials, at most 10.", positive)
    space: dict[str, dict[str, dict[str, Any]]] = option(
        doc="Search space per method, replacing that method's default parameters: "
            "{lora: {learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}, r: {choices: [4, 8, 16]}}}. A "
            "parameter is a `train` key (learning_rate, epochs, weight_decay, warmup_ratio, dropout, batch_size) "
            "or one of the method's options. Default: learning rate log-uniform over 1.5 decades around the "
            "method's default, and the method's own (LoRA r and alpha, adapter reduction factor, full "
            "fine-tuning's frozen layers).", factory=dict)


# Train keys a hyper-parameter search may set (`tune.space`); any other parameter is one of the method's options.
TRAIN_PARAMS = ("learning_rate", "epochs", "weight_decay", "warmup_ratio", "dropout", "batch_size")


@dataclass
class MethodConfig:
    """`name` picks the method; its options are that method's own typed dataclass."""
    name: str
    options: Any


@dataclass
class RunConfig:
    task: str = option("classification", "What is learned: `classification`, `regression`, `extractive_qa` "
                       "(answers as spans of a context, SQuAD-style, with an encoder) or `generation` "
                       "(instruction, chat or translation fine-tuning of a decoder).")
    model: str = option("minilm", "A built-in alias (`tunelab models`) or a local Hugging Face model folder.")
    data: DataConfig = option(doc="Where the examples come from and how they are split.", factory=DataConfig)
    method: MethodConfig = option(doc="The adaptation method and its options.",
                                  factory=lambda: MethodConfig("lora", None))
    train: TrainConfig = option(doc="Optimisation and early stopping.", factory=TrainConfig)
    methods: dict[str, dict[str, Any]] = option(doc="Per-method options used by `tunelab compare`, e.g. "
                                                "{lora: {r: 16}, full: {freeze_layers: 2}}.", factory=dict)
    compare: CompareConfig = option(doc="Seeds and confidence of `tunelab compare`.", factory=CompareConfig)
    tune: TuneConfig = option(doc="Hyper-parameter search per method (Optuna).", factory=TuneConfig)
    output: str = option("runs", "Folder that receives what a command writes: run folders (`tunelab train`, "
                         "`tune`) and comparison folders (`tunelab compare`). Unset, runs go to runs/ and "
                         "comparisons to comparisons/; a command's --output wins over it.")
    name: str | None = option(None, "Run folder name. Unset: `<data>-<method>` (never overwrites silently).")
    allow_unsafe_weights: bool = option(False, "Allow pickle (.bin) weights for local models; off by default "
                                        "because unpickling runs code.")

    # Each task with options of its own (`Task.Options`) contributes a top-level block named after the task
    # (`generation:`, `extractive_qa:`); `settings` builds them, so no task's options are defined here.
    task_options: dict[str, Any] = field(init=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out["method"] = {"name": self.method.name, **to_dict(self.method.options)}
        del out["task_options"]
        blocks = {name: to_dict(options) for name, options in self.task_options.items()}
        # The task blocks sit after `train`, where a reader of a saved config.yaml has always found them.
        keys = list(out)
        at = keys.index("train") + 1
        return {**{k: out[k] for k in keys[:at]}, **blocks, **{k: out[k] for k in keys[at:]}}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.epochs=5", "method.name=full"]` → nested dict; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            where = f" ({e.problem})" if getattr(e, "problem", None) else ""
            raise ConfigError(f"override {item!r}: the value is not valid YAML{where}; quote strings that hold "
                              f"braces, colons or commas, e.g. 'method.templates=[\"Review: {{text}}\"]'") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key inside a value")
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; give the path to a YAML file such as configs/sentiment/lora.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (task, model, data, method, train)")
    return data


# Keys (and blocks) that change how a run is carried out or compared, never what it learns: a run may be reused or
# resumed across them.
NO_EFFECT_ON_RESULTS = ("train.checkpoint_every", "train.keep_checkpoints", "train.report_to", "compare", "tune")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The keys where two config dicts differ in a way that changes the results, as "train.epochs 3 → 5"."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    key = prefix.rstrip(".")
    no_effect = any(key == k or key.startswith(k + ".") for k in NO_EFFECT_ON_RESULTS)
    return [] if old == new or no_effect else [f"{key} {old!r} → {new!r}"]
