# Two commands for a newcomer: `make run` (gateway on 127.0.0.1:8000, SQLite, no external service)
# and `make test` (the whole suite). Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

.PHONY: install run test lint bench bench-smoke worker
install: $(VENV)/.installed

run: install
	$(PY) manage.py migrate --noinput
	$(PY) scripts/run_local.py --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

worker: install
	$(PY) manage.py run_grants

bench: install
	$(PY) bench/run.py

bench-smoke: install
	$(PY) bench/run.py --smoke
