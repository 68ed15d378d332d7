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
# thread each (tests/conftest.py): on 2 cores 10 minutes instead of 14.6 for one process (measured). The 25
# slowest tests are listed at the end, to keep the suite under its 15 minutes.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# Every benchmark (hours on 2 cores: run on an idle machine), then BENCHMARKS.md rewritten from the results
# (benchmarks/report.py lists them; `python benchmarks/report.py` alone only rewrites the page). The Keras
# reference needs its own venv: python3.11 -m venv /tmp/kerasvenv && /tmp/kerasvenv/bin/pip install tensorflow-cpu numpy
# On a GPU machine: $(BIN)/python benchmarks/report.py --run --gpu (the GPU rows too).
KERAS_PYTHON ?= /tmp/kerasvenv/bin/python
bench: $(STAMP)
	KERAS_PYTHON=$(KERAS_PYTHON) $(BIN)/python benchmarks/report.py --run

clean:
	rm -rf $(VENV) runs
