# Two commands on a fresh machine: `make run` (the default job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras of pyproject.toml to install: `make test EXTRAS=dev,avalanche` adds the Avalanche
# integration and so runs its tests (CI does).
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)
PRESET ?= configs/fmnist-quick.yaml
DATA ?= data
ARGS ?=

.PHONY: run test check-wheel data lint mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/instil fetch fmnist --root $(DATA)

run: data
	INSTIL_DATA=$(DATA) $(BIN)/instil run $(PRESET) --resume $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

# The wheel as a user installs it, in a clean environment (scripts/check-wheel.sh).
check-wheel: $(STAMP)
	bash scripts/check-wheel.sh

# Mutation testing of the core modules (pyproject.toml's [tool.mutmut]; docs/testing.md):
# slow, not part of `make test` or CI. Scores and survivors go to runs/mutation/.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS),mutation]'
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python scripts/mutation-score.py runs/mutation

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs mutants
