# `make serve` and `make test` are the README's quick start; both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint format clean

$(BIN)/berth: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

serve: $(BIN)/berth  ## serve a registry on 127.0.0.1:5000 (SQLite, blobs under ./var)
	$(BIN)/berth serve --bind 127.0.0.1:5000

test: $(BIN)/berth  ## lint, then every test (API, storage, migrations, end to end)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/berth  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/berth  ## rewrite files with ruff's formatter
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove the virtualenv and local data
	rm -rf $(VENV) var
