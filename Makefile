# Two commands on a fresh machine: `make run` (the default job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= configs/fmnist-quick.yaml
DATA ?= data
ARGS ?=

.PHONY: run test data lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/instil fetch fmnist --root $(DATA)

run: data
	INSTIL_DATA=$(DATA) $(BIN)/instil run $(PRESET) --resume $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs
