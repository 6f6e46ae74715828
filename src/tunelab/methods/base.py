"""What a method is: one interface for the three families, so that nothing outside `methods/` asks which kind
of method it holds.

Every method goes through the same life: `setup` (load the model it needs and make it ready) or `load` (from a
finished run's model folder), `fit` on the training split, `outputs` for any examples, `save`, and `estimate`
(what a run will cost, timed on a few real batches). Two kinds implement it:
- `TrainedMethod`: `setup` freezes or wraps a task model (its subclasses' `prepare`), the one training loop
  trains it, and `save`/`load` write the result in an ecosystem format (`save_model`/`load_model`).
- `PromptEngineering` (`prompt.py`): `fit` chooses prompts on the validation split without gradients, and
  `outputs` scores the labels or generates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .. import models
from ..config import RunConfig
from ..data import Example, Splits
from ..tasks import TASKS, Task
from ..training.batches import Batches, timing_batches
from ..training import fsdp
from ..training.checkpoint import Checkpoint
from ..training.loop import Hooks, train
from ..training.state import Training, TrainState
from ..training.memory import enable_gradient_checkpointing
from ..training.precision import device, pad_multiple, resolve

TIMED_STEPS, WARMUP_STEPS = 24, 2  # `estimate`: training steps timed, after untimed ones that warm the caches


@dataclass
class NoOptions:
    """This method has no options of its own."""


@dataclass
class Run:
    """What a method works with: the run's config, its task and labels, and the base model's folder and tokenizer."""
    cfg: RunConfig
    task: Task
    labels: list[str]
    folder: Path
    tokenizer: Any

    @classmethod
    def of(cls, cfg: RunConfig, task: Task, labels: list[str]) -> "Run":
        folder = models.resolve(cfg.model)
        return cls(cfg, task, labels, folder, models.load_tokenizer(folder))


class Method:
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    tasks: ClassVar[tuple[str, ...] | None] = ("classification", "regression")  # None: every registered task
    family: ClassVar[str] = "peft"  # "prompt", "peft" or "full": the three families of the report
    description: ClassVar[str] = ""
    # What `tunelab tune` searches besides the learning rate, in the `tune.space` format: {option: {choices: [...]}}
    # or {option: {low, high, log}}. A method without a default learning rate has nothing to search.
    default_learning_rate: ClassVar[float | None] = None
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    seeded: ClassVar[bool] = True  # whether `train.seed` changes the result (`compare --seeds` runs it again)

    @classmethod
    def task_names(cls) -> list[str]:
        """The tasks this method can adapt a model to."""
        return TASKS.names() if cls.tasks is None else list(cls.tasks)

    @classmethod
    def supports(cls, task: str) -> bool:
        return task in cls.task_names()

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()
        self.run: Run | None = None
        self.model: nn.Module | None = None
        self.precision = "fp32"
        self.newly_initialised: list[str] = []  # weights the base model's checkpoint did not hold
        self.head_modules: list[str] = []  # modules trained whatever the method (the task head)

    def setup(self, run: Run) -> None:
        """Load the model this method needs and make it ready: frozen, wrapped, or attached to a scorer."""
        raise NotImplementedError

    def load(self, run: Run, folder: Path) -> None:
        """Make the method as it was at the end of the run whose model folder is `folder`."""
        raise NotImplementedError

    def fit(self, splits: Splits, log: Callable[[str], None], *, checkpoint: Checkpoint | None = None,
            resume: bool = False, on_evaluation: Callable[[float, float], None] | None = None,
            first_epoch_reports: int = 1, hooks: Hooks | None = None) -> TrainState | None:
        """Adapt to the training split, choosing on the validation split; returns the training state, if any."""
        raise NotImplementedError

    def outputs(self, examples: list[Example], with_loss: bool = False) -> tuple[Any, float | None]:
        """The task's outputs for `examples` (label scores, answers, generated texts) and the mean loss if asked."""
        raise NotImplementedError

    def save(self, folder: Path | None) -> None:
        """Write what was learned into the run's model folder; None in the other processes of a data-parallel run,
        which write nothing but take part where the weights are gathered from all of them (FSDP)."""
        raise NotImplementedError

    def run_files(self) -> dict[str, list[dict[str, Any]]]:
        """Extra JSON-lines files for the run folder (name → rows)."""
        return {}

    def parameters(self) -> dict[str, int]:
        """Trainable and total weights."""
        return count_parameters(self.model)

    def estimate(self, splits: Splits, load_seconds: float) -> dict[str, Any]:
        """What fitting will cost, timed on a few real batches: `fit_seconds`, `trainable`, `total` and
        `load_seconds`, and `kept_copy_mb` where fitting keeps a copy of weights (`estimation.py`)."""
        raise NotImplementedError


class TrainedMethod(Method):
    """A method that trains weights with the one training loop; subclasses say how the model is prepared (which
    weights train, what is added), saved and loaded."""
    tasks = None  # the loop trains whatever model a task loads, with the loss the model computes
    default_learning_rate: ClassVar[float] = 5e-4

    # -- what a subclass defines -----------------------------------------------------------
    def prepare(self, model: nn.Module, head_modules: list[str], task_type: str = "SEQ_CLS") -> nn.Module:
        """Freeze what is not trained (and wrap the model where the method needs to).

        `task_type` is peft's name for the task's model kind (`SEQ_CLS`, `CAUSAL_LM`: `Task.peft_task_type`);
        methods outside peft do not need it.
        """
        raise NotImplementedError

    def save_model(self, model: nn.Module, folder: Path) -> None:
        raise NotImplementedError

    def load_model(self, folder: Path, load_base: Callable[..., nn.Module]) -> nn.Module:
        """Rebuild the trained model from `folder`; `load_base()` gives a fresh base task model (`load_base(path)`:
        the one saved there)."""
        raise NotImplementedError

    def load_options(self) -> dict[str, Any]:
        """Extra keywords for the base model's `from_pretrained` (a quantization config)."""
        return {}

    # -- the interface -----------------------------------------------------------------------
    def setup(self, run: Run) -> None:
        self.run = run
        model = self._load_base()
        self.head_modules = head_modules(model, self.newly_initialised, run.task.head_names)
        self.model = self.prepare(model, self.head_modules, run.task.peft_task_type)
        # A quantized model is placed by its loader; a sharded one (FSDP) moves its shards alone, as the whole
        # model may not fit the device.
        if getattr(self.model, "hf_quantizer", None) is None and not run.cfg.train.fsdp:
            self.model.to(device())
        if run.cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(self.model, run.cfg.model)
        self.precision = resolve(run.cfg.train.precision, device())

    def load(self, run: Run, folder: Path) -> None:
        self.run = run
        self.model = self.load_model(folder, self._load_base)
        self.model.to(device()).eval()
        self.precision = resolve(run.cfg.train.precision, device())

    def _load_base(self, folder: Path | None = None) -> nn.Module:
        """A fresh base task model (or the one saved in `folder`), seeded and quiet."""
        cfg, task = self.run.cfg, self.run.task
        torch.manual_seed(cfg.train.seed)  # the new head's initialisation is part of the run's seed
        model, self.newly_initialised = models.load_model(
            task.auto_class(), Path(folder or self.run.folder), allow_unsafe=cfg.allow_unsafe_weights,
            dropout=cfg.train.dropout, **task.model_kwargs(self.run.labels), **self.load_options())
        models.check_tokenizer(self.run.tokenizer, model, Path(folder or self.run.folder))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.run.tokenizer.pad_token_id  # decoders pool the last non-pad token
        task.bind(model)
        return model

    def fit(self, splits: Splits, log: Callable[[str], None], *, checkpoint: Checkpoint | None = None,
            resume: bool = False, on_evaluation: Callable[[float, float], None] | None = None,
            first_epoch_reports: int = 1, hooks: Hooks | None = None) -> TrainState:
        cfg, task = self.run.cfg, self.run.task
        metric = cfg.train.early_stopping.metric or task.default_metric
        p = self.parameters()
        log(f"{cfg.method.name}: training {p['trainable']:,} of {p['total']:,} weights "
            f"({100 * p['trainable'] / p['total']:.2f}%) on {len(splits.train)} examples, {self.precision} on "
            f"{device().type}")
        batches = Batches(task, self.run.tokenizer, splits.train, splits.labels, cfg.data.max_length,
                          multiple=pad_multiple(self.precision))

        def evaluate() -> dict[str, Any]:
            outputs, loss = self.outputs(splits.validation, with_loss=True)
            metrics = task.metrics(outputs, splits.validation, splits.labels)
            return metrics if loss is None else {**metrics, "loss": loss}

        training = Training.start(self.model, cfg.train, cfg.train.learning_rate or self.default_learning_rate,
                                  batches.n_batches(cfg.train.batch_size * cfg.train.gradient_accumulation_steps),
                                  self.precision, device())
        if fsdp.is_sharded(self.model):
            log(fsdp.describe(self.model))
        state = train(training, batches, evaluate, metric, task.better, log, checkpoint, resume, on_evaluation,
                      first_epoch_reports, hooks)
        self.model.eval()
        return state

    def outputs(self, examples: list[Example], with_loss: bool = False) -> tuple[Any, float | None]:
        cfg = self.run.cfg
        return self.run.task.outputs(self.model, self.run.tokenizer, examples, self.run.labels,
                                     max_length=cfg.data.max_length, batch_size=cfg.train.eval_batch_size,
                                     precision=self.precision, device=device(), with_loss=with_loss)

    def save(self, folder: Path | None) -> None:
        if folder is not None:
            self.save_model(self.model, folder)

    def estimate(self, splits: Splits, load_seconds: float) -> dict[str, Any]:
        """Seconds per training step, timed on real batches through the loop's own `Training.step`, times the
        run's steps, plus one validation pass per epoch; the first, untimed batch is the longest, so the peak
        memory includes the largest activations."""
        cfg = self.run.cfg
        start = time.perf_counter()
        batches = Batches(self.run.task, self.run.tokenizer, splits.train, splits.labels, cfg.data.max_length,
                          multiple=pad_multiple(self.precision))
        tokenise_seconds = time.perf_counter() - start
        # Forward/backward passes of batch_size examples, each timed with its update: with gradient accumulation
        # a step is that many passes and one update, so passes × time per pass still gives the epoch's time.
        per_epoch = batches.n_batches(cfg.train.batch_size)
        training = Training.start(self.model, cfg.train, 1e-5, per_epoch, self.precision, device())
        timed = timing_batches(batches, cfg.train.batch_size, torch.Generator().manual_seed(cfg.train.seed),
                               WARMUP_STEPS + TIMED_STEPS, cfg.train.group_by_length)
        self.model.train()
        step_times = []
        for i, batch in enumerate(timed):
            start = time.perf_counter()
            training.step(batch)
            if i >= WARMUP_STEPS:
                step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        self.outputs(splits.validation, with_loss=True)  # the task's own pass: generating, for generation
        eval_seconds = time.perf_counter() - start
        step, steps = sum(step_times) / len(step_times), per_epoch * cfg.train.epochs
        params = self.parameters()
        kept = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad) / 2**20
        seconds = load_seconds + tokenise_seconds + steps * step + cfg.train.epochs * eval_seconds
        return {"fit_seconds": round(seconds, 1), "trainable": params["trainable"], "total": params["total"],
                "seconds_per_step": round(step, 4), "steps": steps, "load_seconds": round(load_seconds, 2),
                "kept_copy_mb": kept}


def head_modules(model: nn.Module, newly_initialised: list[str], head_names: tuple[str, ...]) -> list[str]:
    """Modules every method trains: what the checkpoint did not provide, plus the task head (`Task.head_names`).

    A frozen random head (or pooler) caps a PEFT method at the majority class, so the head is
    always trained, whatever the method.
    """
    names = set(newly_initialised)
    for name, _ in model.named_modules():
        if name.split(".")[-1] in head_names and not any(name.startswith(n + ".") for n in names):
            names.add(name)
    # Keep outermost modules only: training `classifier` covers `classifier.dense`.
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names if o != n))


def set_trainable(model: nn.Module, prefixes: list[str]) -> None:
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(weights_in(p) for p in model.parameters())
    trainable = sum(weights_in(p) for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def weights_in(param: torch.Tensor) -> int:
    """The model weights a parameter holds. bitsandbytes' 4-bit parameters (QLoRA) pack two weights in each byte of
    their storage, so `numel()` counts half of them (peft's `print_trainable_parameters` counts them the same way):
    SmolLM2 showed "4.9M of 86.3M weights" under QLoRA instead of its 139.4M."""
    if type(param).__name__ == "Params4bit":
        return param.numel() * 2 * param.element_size()  # bytes of its storage type (uint8 by default) × 2
    return param.numel()


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
