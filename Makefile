# pgha: the two commands README.md promises, and what they stand on.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv deps test unit demo lab-up lab-down clean

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(VENV)/.installed

deps:
	bash .ci/install-deps

## The main job: the lab (4 real hosts) plus a full migration; waits for the cutover's outcome and prints it
## (each host's outcome, how long Airflow was stopped, where the agents' log is), the Airflow UI address and login.
demo: deps venv
	$(PY) lab/demo

## Run every test: unit tests and real services on loopback (two workers), then the lab end-to-end tests:
## the main session (a PostgreSQL 15 source, Airflow 3.3.2), then a PostgreSQL 13 source on Airflow 3.0.6
## moved to a 15 and a 17 cluster (its own lab session: the source major is provisioned).
test: deps venv
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not lab" tests
	$(VENV)/bin/pytest -q --durations=15 -m lab tests
	PGHA_LAB_SOURCE_MAJOR=13 $(VENV)/bin/pytest -q --durations=5 -m lab tests/lab/test_lab_pg13_source.py

unit: deps venv
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not lab" tests

lab-up:
	lab/lab up

lab-down:
	lab/lab down

clean:
	rm -rf $(VENV) .pytest_cache
