# Two commands for a newcomer: `make run` (gateway on 127.0.0.1:8000, SQLite, no external service)
# and `make test` (the whole suite). Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

# Runtime packages for `make run`; the dev tools (pytest, ruff, mypy, selenium) only for the rest.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

.PHONY: install run test lint bench bench-smoke worker
install: $(VENV)/.installed

run: $(VENV)/.runtime
	$(PY) manage.py setup_database
	$(PY) scripts/run_local.py --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

worker: $(VENV)/.runtime
	$(PY) manage.py run_grants

bench: $(VENV)/.runtime
	$(PY) bench/run.py

bench-smoke: $(VENV)/.runtime
	$(PY) bench/run.py --smoke
