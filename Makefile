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

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/classify_throughput.py
	$(BIN)/python benchmarks/classify_defaults.py

clean:
	rm -rf $(VENV) runs
