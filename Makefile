# `make serve` and `make test` are the README's quick start; both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The fast tier: no PostgreSQL, no real servers or clients.
FAST_TESTS := tests/unit tests/api tests/test_config.py tests/test_access.py tests/notify/test_endpoints.py

.PHONY: serve test check lint types format clean

$(BIN)/berth: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

serve: $(BIN)/berth  ## serve a registry on 127.0.0.1:5000 (SQLite, blobs under ./var)
	$(BIN)/berth serve --bind 127.0.0.1:5000

test: lint types  ## lint, types, then every test (unit, API, storage, e2e, deploy); what CI runs
	$(BIN)/pytest $(PYTEST_ARGS)

check: lint types  ## the fast tier, under a minute: unit and API tests on SQLite
	$(BIN)/pytest -q -m "not postgres and not e2e" $(FAST_TESTS) $(PYTEST_ARGS)

lint: $(BIN)/berth  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(BIN)/berth  ## mypy over app/ (settings in setup.cfg)
	$(BIN)/mypy

format: $(BIN)/berth  ## rewrite files with ruff's formatter
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove the virtualenv and local data
	rm -rf $(VENV) var
