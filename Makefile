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

run: $(VENV)/.installed ## the whole system in the foreground (Ctrl-C stops it; STACK_DB=postgres, RABBITMQ_NODES=3)
	$(PY) -m devstack run

# The suite runs once per database: SQLite (the default of make run) and PostgreSQL (what users deploy).
TEST_DBS ?= sqlite postgres

test: $(VENV)/.installed ## RabbitMQ + Redis (+ PostgreSQL), then the whole test suite on each of TEST_DBS
	@set -e; for db in $(TEST_DBS); do $(PY) -m devstack test --db $$db $(PYTEST_ARGS); done

bench: $(VENV)/.installed ## the benchmark on its own stack (BENCH_ARGS="--orders 1000 --db postgres ...")
	$(PY) -m bench $(BENCH_ARGS)

services: $(VENV)/.installed ## only the servers (RabbitMQ, Redis; PostgreSQL with STACK_DB=postgres), for running things by hand
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
