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

## Run every test: unit tests and real services on loopback (two workers), then the lab end-to-end tests.
test: deps venv
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not lab" tests
	$(VENV)/bin/pytest -q -m lab tests

unit: deps venv
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not lab" tests

lab-up:
	lab/lab up

lab-down:
	lab/lab down

clean:
	rm -rf $(VENV) .pytest_cache
