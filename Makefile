# Quick start: `make demo` and `make test` each do all of their own set-up on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

install: $(STAMP)

# torch/torchvision first and pinned (constraints.txt): the local wheels are 2.14.1/0.29.1 and an
# unpinned resolver would download a different multi-GB build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recogen demo --out runs/demo

# Two worker processes (pytest-xdist), one file per worker at a time (module fixtures built once), one
# thread each (tests/conftest.py): on 2 cores 10 minutes instead of 14.6 for one process (measured).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Issue 10's benchmarks (3 seeds each; hours in all on 2 cores: run on an idle machine). The Keras
# reference needs its own venv: python3.11 -m venv /tmp/kerasvenv && /tmp/kerasvenv/bin/pip install tensorflow-cpu numpy
KERAS_PYTHON ?= /tmp/kerasvenv/bin/python
bench: $(STAMP)
	$(BIN)/python benchmarks/classify_throughput.py
	$(BIN)/python benchmarks/classify_defaults.py --data mnist-5k --seeds 0 1 2 $(if $(wildcard $(KERAS_PYTHON)),--keras-python $(KERAS_PYTHON)) --json runs/bench/classify_defaults.json
	$(BIN)/python benchmarks/dense_defaults.py --task segment --data digit-scenes --seeds 0 1 2 --json runs/bench/segment_defaults.json
	$(BIN)/python benchmarks/dense_defaults.py --task detect --data digit-scenes --seeds 0 1 2 --json runs/bench/detect_defaults.json
	$(BIN)/python benchmarks/generate_judge.py --seeds 0 1 2 --json runs/bench/generate_judge.json
	$(BIN)/python benchmarks/finetune_vs_scratch.py --seeds 0 1 2 --json runs/bench/finetune_vs_scratch.json
	$(BIN)/python benchmarks/finetune_vs_scratch.py --source mnist-5k --target textures --seeds 0 1 2 --json runs/bench/finetune_vs_scratch_reverse.json
	$(BIN)/python benchmarks/explain_latency.py --images 5 --json runs/bench/explain_latency.json

clean:
	rm -rf $(VENV) runs
