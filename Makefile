# The two commands the README names: `make demo` and `make test`. Both install what they need.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

.PHONY: demo test test-serial test-py312 test-py313 lint typecheck install fake-provider

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	PATH=$(BIN):$$PATH $(BIN)/careflow demo

# The Airflow tier (tests/e2e, tests/chaos, tests/airflow_runs: mostly waiting on Airflow's own
# processes and on outages) runs beside the rest, in a second pytest process (tests/suite.py).
test: $(VENV)/.installed
	PATH=$(BIN):$$PATH $(BIN)/python tests/suite.py

# The same tests in one pytest process, one after the other.
test-serial: $(VENV)/.installed
	PATH=$(BIN):$$PATH $(BIN)/python -m pytest

test-py312:
	bash .ci/other-python 3.12

test-py313:
	bash .ci/other-python 3.13

lint: $(VENV)/.installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

fake-provider: $(VENV)/.installed
	$(BIN)/careflow fake-provider --port 8025 --token dev-token
