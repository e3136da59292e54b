# pgha: the two commands README.md promises, and what they stand on.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv deps test unit demo lab-up lab-down clean

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed

deps:
	bash .ci/install-deps

## Run every test: unit tests, real services on loopback (and the lab end-to-end tests).
test: deps venv
	$(VENV)/bin/pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
