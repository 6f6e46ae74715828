"""`tunelab export RUN OUT`: a finished run as a folder that plain `transformers` / `peft` load, on any machine.

What each method gives:
- LoRA, IA3, DoRA (peft): a PEFT adapter folder; with `--merge`, the adapter merged into the base weights, a plain
  Hugging Face folder (`AutoModelFor*.from_pretrained(OUT)`, `pipeline(...)`).
- full fine-tuning: the plain folder (nothing to merge).
- bottleneck adapters: tunelab's adapter folder; they sit between layers that transformers has no place for, so
  they cannot merge, and loading them needs tunelab.
- prompt: `prompt.json` — the chosen prompt, label words, demonstrations and calibration, with the scoring rule.

Every export carries its labels (`id2label`/`label2id` in `config.json`), the tokenizer (with its chat template),
and a model card (README.md: base, method, data, metrics, how to load). The base model is named the way another
machine can find it — a hub name for the built-in aliases, else the name the model's config gives — never by a path
inside the virtual environment of the machine that trained it; the card says where it was here.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import models
from .errors import TunelabError
from .methods.adapter import BottleneckAdapter
from .methods.full import FullFineTuning
from .methods.lora import PeftMethod
from .methods.prompt import PromptEngineering
from .pipeline import reload
from .runs import read_run
from .settings import from_dict


def export(run: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False,
           log: Callable[[str], None] = print) -> Path:
    """Write the run `run` as an export folder `out`; returns it. Written aside and renamed when complete, so a
    failed export leaves nothing behind, and an existing `out` is replaced only with `overwrite`, once the new
    one is whole."""
    folder, raw = read_run(run)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise TunelabError(f"{folder} has no metrics.json; the run did not finish, train it again")
    metrics = json.loads(metrics_path.read_text())
    out = Path(out)
    if out.is_file():
        raise TunelabError(f"{out} is a file; give a folder to write the export in")
    if out.exists() and not overwrite:
        raise TunelabError(f"{out} exists already; choose another folder or pass --overwrite")
    if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
        raise TunelabError(f"{out}: export to a folder outside the run folder {folder}")
    cfg = from_dict(raw)
    adapted = reload(cfg, folder, metrics["labels"])
    base = base_reference(cfg.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        kind = _write(adapted, tmp, merge, base, log)
        adapted.tokenizer.save_pretrained(tmp)
        template = getattr(getattr(adapted.task, "options", None), "template", None)
        (tmp / "README.md").write_text(model_card(kind, cfg, metrics, base, adapted.task.auto_class().__name__,
                                                  str(out), template))
        if out.exists():  # --overwrite: the old export goes only now that the new one is whole
            trash = out.with_name(f".{out.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {folder} ({kind}) to {out}")
    return out


def base_reference(model: str) -> dict[str, str]:
    """How another machine finds the base model: `name` (a hub-style name where one is known) and where it was
    here (`local`), which only this machine can use."""
    local = str(models.resolve(model).resolve())
    if model in models.MODELS and models.MODELS.get(model).hub:
        alias = models.MODELS.get(model)
        return {"name": alias.hub, "alias": model, "local": local, "note": alias.hub_note}
    from transformers import AutoConfig
    named = getattr(AutoConfig.from_pretrained(local), "_name_or_path", "") or ""
    hub_like = named.count("/") == 1 and not Path(named).is_absolute() and not named.startswith(".")
    return {"name": named if hub_like else Path(local).name, "local": local,
            "note": "" if hub_like else "the base model's own folder name; give the path of your copy of it"}


def _write(adapted, tmp: Path, merge: bool, base: dict[str, str], log) -> str:
    """Writes the model files of the export; returns what kind of export it is."""
    method = adapted.method
    if isinstance(method, PeftMethod):
        if merge:
            _unwrap_trained_copies(method.model)
            merged = method.model.merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            _generation_config(adapted, tmp)
            return "merged"
        method.model.save_pretrained(tmp, safe_serialization=True)
        adapter_config = tmp / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = base["name"]
        adapter_config.write_text(json.dumps(data, indent=2) + "\n")
        # The labels travel in a config.json beside the adapter: AutoConfig.from_pretrained(OUT) reads them.
        method.model.get_base_model().config.save_pretrained(tmp)
        _generation_config(adapted, tmp)
        return "peft"
    if isinstance(method, FullFineTuning):
        method.model.save_pretrained(tmp, safe_serialization=True)
        _generation_config(adapted, tmp)
        return "plain"
    if isinstance(method, BottleneckAdapter):
        log("bottleneck adapters cannot be merged into the base weights (they add layers that transformers has no "
            "place for): exporting tunelab's adapter folder, which `tunelab predict` reads" if merge else
            "bottleneck adapters load with tunelab only (see the README.md of the export)")
        method.save(tmp)
        method.model.config.save_pretrained(tmp)  # the labels, and the base model's architecture
        return "bottleneck"
    if isinstance(method, PromptEngineering):
        (tmp / "prompt.json").write_text(json.dumps(portable_prompt(adapted, base), indent=2, ensure_ascii=False))
        return "prompt"
    raise TunelabError(f"method {adapted.cfg.method.name} has no export yet")


def _unwrap_trained_copies(model) -> None:
    """Puts each module trained whole (peft's `modules_to_save`: the heads) in place of its wrapper. peft's IA3
    merge expects every wrapped module to have a `weight`, which a pooler does not, and fails."""
    from peft.utils import ModulesToSaveWrapper
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, module.modules_to_save[module.active_adapter])


def _generation_config(adapted, tmp: Path) -> None:
    """A generation run's decoding settings, so that `model.generate(...)` decodes as tunelab did."""
    options = getattr(adapted.task, "options", None)
    if adapted.task.auto_class().__name__ != "AutoModelForCausalLM" or options is None:
        return
    from transformers import GenerationConfig

    from .tasks.generation import end_token_id
    GenerationConfig(max_new_tokens=options.max_new_tokens, num_beams=options.num_beams, do_sample=options.do_sample,
                     repetition_penalty=options.repetition_penalty,
                     no_repeat_ngram_size=options.no_repeat_ngram_size,
                     pad_token_id=adapted.tokenizer.pad_token_id, eos_token_id=end_token_id(adapted.tokenizer),
                     **({"temperature": options.temperature, "top_p": options.top_p} if options.do_sample else {})
                     ).save_pretrained(tmp)


def portable_prompt(adapted, base: dict[str, str]) -> dict[str, Any]:
    """prompt.json in a form that needs no tunelab: everything the chosen prompt scores with, and the rule."""
    method = adapted.method
    state = json.loads(json.dumps(method.saved_state()))
    c = state["chosen"]
    encoder = state.get("chat_template_used") is None and "prompt_example" not in state
    rule = ("embedding similarity: mean-pool the last hidden states (attention mask) of `template` filled with the "
            "input ({text}) and `description`, L2-normalise to x; each label's vector d_c is the normalised mean of "
            "the embeddings of `label_template` filled with each of its `label_words` ({label}); with shots, p_c is "
            "the normalised mean embedding of the label's `demonstrations` written with `template`; score s_c = "
            "(1 - weight)·x·d_c + weight·x·p_c; minus `calibration_bias` when it is given; the label is argmax s_c"
            if encoder else
            "label log-likelihood: write the prompt as `prompt_example` shows ({text} is the input; through the "
            "tokenizer's chat template when `chat_template_used`), then score each label by the summed "
            "log-probability of `label_template` filled with each of its `label_words` after the prompt; minus "
            "`calibration_bias` when given; the label is argmax")
    return {"format": "tunelab prompt 1", "base_model": base["name"], "base_note": base.get("note", ""),
            "scoring": "embedding" if encoder else "likelihood", "rule": rule, "labels": state["labels"],
            "label_words": {label: state["verbalizers"].get(label) or [label] for label in state["labels"]},
            "description": state["description"], "template": c["template"], "label_template": c["label_template"],
            "shots": c["shots"], "weight": c.get("weight", 0.0), "calibrate": c["calibrate"],
            "calibration_bias": state.get("calibration_bias"),
            "demonstrations": state.get("demonstrations"), "prompt_example": state.get("prompt_example"),
            "chat_template_used": state.get("chat_template_used"), "max_length": adapted.cfg.data.max_length}


LOADING = {
    "merged": """```python
from transformers import {auto}, AutoTokenizer, pipeline
model = {auto}.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
{pipeline}```""",
    "plain": None,  # as merged
    "peft": """```python
from peft import PeftModel
from transformers import AutoConfig, {auto}, AutoTokenizer
config = AutoConfig.from_pretrained("{out}")  # the labels (id2label / label2id)
base = {auto}.from_pretrained("{base}", config=config)
model = PeftModel.from_pretrained(base, "{out}")  # model.merge_and_unload() gives a plain model
tokenizer = AutoTokenizer.from_pretrained("{out}")
```""",
    "bottleneck": """Bottleneck adapters add layers between the base model's own, which transformers cannot load or
merge. Load the run with tunelab: `tunelab predict RUN --input rows.jsonl --output predictions.jsonl`, or copy this
folder as `model/` of a run folder.""",
    "prompt": """Nothing is trained: `prompt.json` holds the chosen prompt, label words, demonstrations and
calibration, and `rule` says how they score a label with the base model (`base_model`), in plain
transformers + numpy.""",
}


def model_card(kind: str, cfg, metrics: dict[str, Any], base: dict[str, str], auto: str, out: str,
               template: str | None = None) -> str:
    test = {k: round(v, 4) for k, v in metrics["test"].items() if isinstance(v, (int, float))}
    pipeline = ('classify = pipeline("text-classification", model=model, tokenizer=tokenizer)\n'
                if auto == "AutoModelForSequenceClassification" else "")
    loading = (LOADING[kind] or LOADING["merged"]).format(auto=auto, out=out, base=base["name"],
                                                          pipeline=pipeline)
    labels = metrics.get("labels") or []
    lines = [
        f"# {cfg.name or cfg.method.name} — exported by tunelab", "",
        f"- base model: `{base['name']}`" + (f" ({base['note']})" if base.get("note") else ""),
        f"  (on the training machine: `{base['local']}`)",
        f"- method: {cfg.method.name} ({metrics['family']}); export: {kind}",
        f"- task: {cfg.task}; data: `{cfg.data.source}`; splits: {metrics.get('splits')}",
        f"- labels: {', '.join(labels)}" if labels else "- labels: none (not a classification task)",
        f"- test metrics: {json.dumps(test)}",
        f"- validation metrics: {json.dumps({k: round(v, 4) for k, v in metrics['validation'].items() if isinstance(v, (int, float))})}",
        f"- trained weights: {metrics['parameters'].get('trainable', 0):,} of {metrics['parameters'].get('total', 0):,}",
        f"- versions: {json.dumps(metrics.get('versions', {}))}", "",
        "## How to load", "", loading, "",
    ]
    if auto == "AutoModelForCausalLM" and kind != "prompt":
        lines += ["Prompts were written as tunelab writes them: through the tokenizer's chat template "
                  "(`apply_chat_template(messages, add_generation_prompt=True)`) when it has one, else the prompt "
                  f"text (template `{template}`) "
                  "ending in a newline, after the BOS token. `generation_config.json` holds the decoding settings "
                  "(greedy unless sampling was configured), so `model.generate(input_ids)` decodes as tunelab did.", ""]
    return "\n".join(lines)
