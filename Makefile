# Two commands do all the set-up: `make demo` (install, index the sample repo, search it,
# complete a few cursors) and `make test` (install with dev tools, lint, run the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch goes first, so nothing below pulls the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/codeslm index examples/sample-repo
	$(BIN)/codeslm search "where is the configuration file parsed" --index-dir index/sample-repo -k 3
	$(BIN)/python examples/demo.py index/sample-repo

lint: $(STAMP)
	$(BIN)/ruff check src tests eval

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) index/*/ eval/results/*/
