# One command to run the system, one to test it. See README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint format services clean-run chaos bench

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	@touch $@

run: $(VENV)/.installed ## the whole system in the foreground (Ctrl-C stops it)
	$(PY) -m devstack run

test: $(VENV)/.installed ## RabbitMQ + Redis, then the whole test suite
	$(PY) -m devstack test $(PYTEST_ARGS)

bench: $(VENV)/.installed ## the benchmark on its own stack (BENCH_ARGS="--orders 1000 --db postgres ...")
	$(PY) -m bench $(BENCH_ARGS)

services: $(VENV)/.installed ## only RabbitMQ and Redis, for running things by hand
	$(PY) -m devstack services

chaos: $(VENV)/.installed ## the pipeline on its own stack under faults, checked (CHAOS_ARGS='--orders 500 --seed 1')
	$(PY) -m chaos $(CHAOS_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py asyncapi --check

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-run: ## forget local data (database, broker state, admin password)
	rm -rf .run
