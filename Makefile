# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when it
# is missing and installs what it needs; later runs reuse it.
VENV ?= .venv
PYTHON ?= python3
# torch and torchvision must come as a matching pair (a mismatch breaks transformers imports).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.poseguide-installed
OFFLINE := HF_HUB_OFFLINE=1 YOLO_OFFLINE=1

.PHONY: demo test lint format install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test,fid]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/poseguide demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(OFFLINE) $(BIN)/pytest

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
