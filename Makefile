# The two quick-start commands are `make run` and `make test`; each creates
# .venv and installs what it needs first. PYTHON picks the interpreter (>= 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LIMIT  ?= 200

.PHONY: run test test-all test-vllm check bench clean mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# installed once per change of pyproject.toml
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## run: install, then run the Coral workflow on the embedded broker and simulator
run: $(VENV)/.installed-dev
	$(BIN)/python -m matrix_p2p run coral --limit $(LIMIT) --out out/coral.jsonl

## test: install, then break a dozen guards one at a time (each must be caught: see mutate),
## then run the test suite (slow chaos tests excluded: see test-all)
test: $(VENV)/.installed-dev
	$(BIN)/python -m tests.mutate --ci
	$(BIN)/python -m pytest

## test-all: every test, the slow chaos and soak scenarios included (real vLLM: test-vllm;
## the report page's browser test needs Debian's chromium: apt-get install -y chromium;
## it skips without)
test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m 'not vllm'

## test-vllm: the tests marked vllm, against real vLLM servers (PyPI's CPU build, pinned, in
## its own cached virtualenv under ~/.cache/matrix_p2p, and a tiny random Llama built there)
test-vllm: $(VENV)/.installed-dev
	$(BIN)/python -m tests.vllm.env
	$(BIN)/python -m pytest -m vllm tests/vllm

## check: lint and type-check
check: $(VENV)/.installed-dev
	$(BIN)/ruff check matrix_p2p agents tests bench workflows
	$(BIN)/mypy

## bench: the quick benchmark run (python -m bench for the full one)
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mx out .pytest_cache .mypy_cache .ruff_cache

## mutate: break each guard in a copy of the tree, one at a time, and show which test
## catches it and how fast (make test runs the CI_SUBSET of them; see tests/mutate.py)
mutate: $(VENV)/.installed-dev
	$(BIN)/python -m tests.mutate
