# One entry point for developers and CI. `make test` sets everything up (virtualenvs,
# media servers are started by the tests themselves, the Molecule image) and runs
# every test: lint, the Python suite on both lines of the support matrix, Molecule.

VENV       := .venv
VENV_DJ6   := .venv-dj6
PYTEST_ARGS ?=

.PHONY: test venvs lint test-python test-dj52 test-dj6 molecule bench clean

test: lint test-python molecule

venvs:
	scripts/make-venv $(VENV) 3.11 "Django>=5.2,<5.3"
	scripts/make-venv $(VENV_DJ6) 3.12 "Django>=6.0,<7"

lint: venvs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-python: test-dj52 test-dj6

# Django 5.2 LTS on Python 3.11
test-dj52: venvs
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The newest Django 6.x on Python 3.12
test-dj6: venvs
	$(VENV_DJ6)/bin/python -m pytest $(PYTEST_ARGS)

molecule:
	scripts/molecule-all

bench: venvs
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(VENV_DJ6) .venv-infra .venv-bench-legacy .pytest_cache .ruff_cache
