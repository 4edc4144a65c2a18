# flowtrail's commands. `make demo` and `make test` are the two a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck layers unit soak bench bench-compare clean

# The virtual environment is created when missing and refreshed when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A pipeline run into ./flowtrail-demo.db (started over each time), then audited and rebuilt.
demo: $(STAMP)
	$(BIN)/flowtrail demo --replace

test: lint typecheck layers unit

lint: $(STAMP)
	$(BIN)/ruff check flowtrail tests benchmarks
	$(BIN)/ruff format --check flowtrail tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

soak: $(STAMP)
	FLOWTRAIL_SOAK=1 $(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# flowtrail beside Prefect 3.9.1 and eventsourcing 9.5.6, each in its own venv under benchmarks/.venvs/.
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/compare/setup_envs.py
	$(BIN)/python benchmarks/compare/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
