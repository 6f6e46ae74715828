"""Shared fixtures: tiny models built from a config (2 layers, hidden size 32) and a tiny dataset."""
from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs three pytest workers on the machine's two cores (pytest-xdist): each, and every process a
    # test starts, computes on one thread, as two processes with a thread per core would fight over the cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # a worker forked warm (below) has torch imported already, before the variable
        sys.modules["torch"].set_num_threads(1)

WARM = Path(__file__).parent / "warm"
_warm_server: list = []  # (the server process, its folder), in the process that started it


def pytest_configure(config):
    """The pytest process starts a warm interpreter (`tests/warm/server.py`) that Python processes are forked from,
    torch and transformers imported: about 4 s of imports less per process, over a hundred processes. With
    `-n N` that is `make test`'s controller, before it starts its workers, and it waits for the imports to be done
    so that the workers themselves start forked from it: they collect the tests with torch imported already, and
    the one server serves them all (one per worker imported the same modules three times over). Until it has
    imported them, and for a test marked `cold_processes`, processes start as usual. TUNELAB_TEST_COLD=1 turns it
    off; a worker inherits what its controller set."""
    import subprocess
    import tempfile
    import time
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    pythonpath = os.pathsep.join(filter(None, [str(WARM), os.environ.get("PYTHONPATH")]))
    if os.environ.get("TUNELAB_TEST_COLD"):  # the client still runs a test's TUNELAB_TEST_PRELOAD, in every process
        os.environ.update(PYTHONPATH=pythonpath)
        return
    folder = tempfile.mkdtemp(prefix="tunelab-warm-")  # a socket's path is at most 107 bytes
    socket = os.path.join(folder, "socket")
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop("TUNELAB_TEST_WARM", None)
    with open(os.path.join(folder, "server.log"), "w") as log:
        server = subprocess.Popen([sys.executable, str(WARM / "server.py"), socket],
                                  env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    _warm_server.append((server, folder))
    os.environ.update(PYTHONPATH=pythonpath, TUNELAB_TEST_WARM_PATH=pythonpath, TUNELAB_TEST_WARM=socket)
    if getattr(config.option, "numprocesses", None):  # workers are started after this hook: wait, within reason
        deadline = time.time() + 60
        while not os.path.exists(socket) and server.poll() is None and time.time() < deadline:
            time.sleep(0.05)


def pytest_unconfigure(config):
    import shutil
    for server, folder in _warm_server:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    _warm_server.clear()


@pytest.fixture(autouse=True)
def _cold_processes(request, monkeypatch):
    """A test that looks at its processes' pids, or at how they start, gets processes that start cold."""
    if request.node.get_closest_marker("cold_processes"):
        monkeypatch.delenv("TUNELAB_TEST_WARM", raising=False)


POSITIVE = ["good", "great", "fine", "lovely", "superb", "excellent", "nice", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "weak", "horrible"]
FILLER = ["the", "film", "was", "a", "plot", "story", "movie", "really", "quite", "actor"]


def tiny_sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "positive" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _write_csv(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("data") / "tiny.csv", tiny_sentences(120))


@pytest.fixture(scope="session")
def tiny_regression_csv(tmp_path_factory) -> Path:
    rows = [(text, 1.0 if label == "positive" else -1.0) for text, label in tiny_sentences(120)]
    return _write_csv(tmp_path_factory.mktemp("data") / "tiny_regression.csv", rows)


def _save_tiny(folder: Path, config) -> Path:
    import torch
    from transformers import AutoModel

    from tunelab import models
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder, safe_serialization=True)
    # The embedded MiniLM's tokenizer serves both tiny models: any tokenizer fits a model built from a config.
    models.load_tokenizer(models.resolve("minilm")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), config)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig
    config = LlamaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         pad_token_id=0, tie_word_embeddings=False)
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), config)


@pytest.fixture
def tiny_config(tiny_csv, tiny_bert, tmp_path):
    """A config dict for a fast run on the tiny BERT; tests override what they need."""
    def make(method: str = "lora", model: Path | None = None, **extra) -> dict:
        cfg = {
            "task": "classification", "model": str(model or tiny_bert),
            "data": {"source": str(tiny_csv), "max_length": 16, "split": {"validation": 0.2, "test": 0.2}},
            "method": {"name": method},
            "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "log_every": 2,
                      "early_stopping": {"patience": 0}},
            "output": str(tmp_path / "runs"),
        }
        return with_changes(cfg, **extra)
    return make


def one_thread_env(cold: bool = False) -> dict[str, str]:
    """The environment for a Python process a test starts: one thread (the same steps give the same bits in every
    process), unbuffered output, offline. Read when the test runs, not at import: the warm interpreter's variables
    (`pytest_configure` above) are set by then. `cold`: this process starts as usual, not forked warm, for a test
    that checks its pid."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1"}
    if cold:
        env.pop("TUNELAB_TEST_WARM", None)
    return env


def with_changes(cfg: dict, **changes) -> dict:
    """A copy of `cfg` with `a__b=value` setting cfg["a"]["b"] (parents made as needed)."""
    out = json.loads(json.dumps(cfg))
    for key, value in changes.items():
        node = out
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


GEN_WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


@pytest.fixture(scope="session")
def tiny_generation_jsonl(tmp_path_factory) -> Path:
    """60 prompt/response pairs: "repeat red cat" → "red cat"."""
    import json
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "tiny_generation.jsonl"
    with path.open("w") as f:
        for _ in range(60):
            a, b = rng.sample(GEN_WORDS, 2)
            f.write(json.dumps({"prompt": f"repeat {a} {b}", "response": f"{a} {b}"}) + "\n")
    return path


@pytest.fixture
def tiny_generation_config(tiny_generation_jsonl, tiny_llama, tmp_path):
    """A config dict for a fast generation run on the tiny Llama."""
    def make(method: str = "lora", **generation) -> dict:
        return {
            "task": "generation", "model": str(tiny_llama),
            "data": {"source": str(tiny_generation_jsonl), "max_length": 32,
                     "split": {"validation": 0.1, "test": 0.1}},
            "method": {"name": method},
            "generation": {"max_new_tokens": 4, **generation},
            "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "log_every": 2,
                      "early_stopping": {"patience": 0}},
            "output": str(tmp_path / "runs"),
        }
    return make


QA_ANIMALS = ["cat", "dog", "fox", "owl", "cow", "bee", "pig", "hen"]
QA_COLOURS = ["red", "blue", "green", "black", "white", "brown", "pink", "grey"]


@pytest.fixture(scope="session")
def tiny_qa_json(tmp_path_factory) -> Path:
    """A SQuAD v1.1 file: 30 contexts like "the cat is red . the dog is blue ." with 2 questions each; the longer
    contexts need several windows at max_length 32."""
    import json
    rng = random.Random(0)
    articles = []
    for c in range(30):
        animals = rng.sample(QA_ANIMALS, 3 + c % 6)
        colours = rng.sample(QA_COLOURS, len(animals))
        context = " ".join(f"the {a} is {col} ." for a, col in zip(animals, colours))
        qas = []
        for q, i in enumerate(rng.sample(range(len(animals)), 2)):
            start = context.index(f"the {animals[i]} is ") + len(f"the {animals[i]} is ")
            qas.append({"id": f"c{c}q{q}", "question": f"what colour is the {animals[i]} ?",
                        "answers": [{"text": colours[i], "answer_start": start}]})
        articles.append({"title": f"context {c}", "paragraphs": [{"context": context, "qas": qas}]})
    path = tmp_path_factory.mktemp("data") / "tiny_qa.json"
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path


@pytest.fixture
def tiny_qa_config(tiny_qa_json, tiny_bert, tmp_path):
    """A config dict for a fast extractive QA run on the tiny BERT, with several windows per long context."""
    def make(method: str = "lora") -> dict:
        return {
            "task": "extractive_qa", "model": str(tiny_bert),
            "data": {"source": str(tiny_qa_json), "max_length": 32, "split": {"validation": 0.2, "test": 0.2}},
            "method": {"name": method},
            "extractive_qa": {"doc_stride": 8, "max_answer_length": 4},
            "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "log_every": 2,
                      "early_stopping": {"patience": 0}},
            "output": str(tmp_path / "runs"),
        }
    return make


@pytest.fixture
def llama_tokenizer(tiny_llama):
    from tunelab import models
    return models.load_tokenizer(tiny_llama)


@pytest.fixture
def causal_lm(tiny_llama):
    """The tiny Llama with its language-model head, seeded, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab import models
    torch.manual_seed(0)
    model, _ = models.load_model(AutoModelForCausalLM, tiny_llama)
    return model.eval()


def pytest_collection_modifyitems(config, items):
    """The long tests first, shared out so that each of `make test`'s workers begins with its share of them.

    `-n 3 --dist worksteal` hands each worker a contiguous third of this queue, and a worker that runs out takes
    half of what is still queued on a busy one, from the back. With all long tests at the head of the queue they
    fell to the first worker: it ran the two kill tests (260 s together) last and alone, 120 s after the others had
    finished. So the long tests are dealt out here, longest first, each to the worker with the least long work so
    far (their `long(seconds=...)`, measured in `make test`), and each worker's third begins with its own.
    Tests that share a module-scoped fixture go to one worker together, so that it is built once.
    """
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))

    def seconds(item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.kwargs.get("seconds", 20)) if marker else 0.0

    def unit(item) -> str:
        shared = any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs)
        return item.module.__name__ if shared else item.nodeid

    units: dict[str, list] = {}
    for item in items:
        if seconds(item):
            units.setdefault(unit(item), []).append(item)
    shares: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for tests in sorted(units.values(), key=lambda ts: -sum(map(seconds, ts))):
        least = load.index(min(load))
        shares[least] += sorted(tests, key=lambda t: -seconds(t))
        load[least] += sum(map(seconds, tests))
    short = iter([item for item in items if not seconds(item)])
    queue, left = [], len(items)
    for i, share in enumerate(shares):  # worksteal's first deal: of what is left, an equal part for each worker
        size = left // (workers - i)
        queue += share + [item for _, item in zip(range(size - len(share)), short)]
        left -= size
    items[:] = queue + list(short)
