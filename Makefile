# Developer tasks. The README's two commands do the same without make.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint typecheck format bench

$(BIN)/proctor:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'

demo: $(BIN)/proctor
	$(BIN)/proctor demo

test: $(BIN)/proctor
	$(BIN)/python -m pytest -n auto

lint: $(BIN)/proctor
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(BIN)/proctor
	$(BIN)/mypy

format: $(BIN)/proctor
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(BIN)/proctor
	$(BIN)/python bench/pipeline.py
