# earshot — `make run` serves the web page + API with the default model; `make test` runs the test suite.
# Both build .venv from scratch on a fresh machine (torch is pinned by constraints.txt to the CPU build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
# Air-gapped installs: weights come from a local mirror when one is present (tests always use it).
ifneq ($(wildcard $(SHARED)/weights),)
export EARSHOT_MODEL_MIRROR ?= $(SHARED)/weights
endif
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/earshot models pull mn04-as
	$(BIN)/earshot serve --model mn04-as --host $(HOST) --port $(PORT)

# The end-to-end tests marked slow run in CI (CI set, as .ci/run sets it) or with SLOW=1; locally they are left out.
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -ra $(if $(CI)$(SLOW),,-m "not slow")

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/frontend.py
	$(BIN)/python benchmarks/tagging.py

clean:
	rm -rf $(VENV) .cache artifacts
