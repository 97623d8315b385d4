# One entry point for developers and CI. `make test` sets everything up (the Debian
# packages when run as root, virtualenvs, the Molecule image; the tests start their own
# media servers and PostgreSQL) and runs every test: lint, the Python suite on the lowest
# and the highest line of the support matrix, Molecule.

VENV       := .venv
VENV_DJ6   := .venv-dj6
PYTEST_ARGS ?=

.PHONY: test system venv venv-dj6 venvs lint test-python test-dj52 test-dj6 molecule bench demo clean

test: system lint test-python
	scripts/molecule-all --no-lint

# The Debian packages the tests need (nginx, lighttpd, PostgreSQL, docker, ...): installed
# when missing and run as root; otherwise it stops with the one command to run.
system:
	scripts/system-packages

# The lowest line of the support matrix: Python 3.11 and Django 5.2 LTS.
venv:
	scripts/make-venv $(VENV) 3.11 "Django>=5.2,<5.3"

# The highest line: Python 3.13 and the newest Django 6.x.
venv-dj6:
	scripts/make-venv $(VENV_DJ6) 3.13 "Django>=6.1,<7"

venvs: venv venv-dj6

# Python: ruff and mypy (with django-stubs); Ansible: yamllint and ansible-lint.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	scripts/lint-infra

test-python: test-dj52 test-dj6

# Django 5.2 LTS on Python 3.11: the library's suite on SQLite, then on PostgreSQL (a
# cluster the suite starts itself, see tests/pg.py), then the example site's (SQLite).
test-dj52: venv
	RESTO_TEST_DB=sqlite $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	RESTO_TEST_DB=postgresql $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	cd example && ../$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The newest Django 6.x on Python 3.13, the same three runs.
test-dj6: venv-dj6
	RESTO_TEST_DB=sqlite $(VENV_DJ6)/bin/python -m pytest $(PYTEST_ARGS)
	RESTO_TEST_DB=postgresql $(VENV_DJ6)/bin/python -m pytest $(PYTEST_ARGS)
	cd example && ../$(VENV_DJ6)/bin/python -m pytest $(PYTEST_ARGS)

molecule:
	scripts/molecule-all

bench: venv
	$(VENV)/bin/python bench/run.py  # runs bench/drain.py and bench/audit.py too
	$(VENV)/bin/python bench/overhead.py

clean:
	rm -rf $(VENV) $(VENV_DJ6) .venv-infra .venv-bench-legacy .pytest_cache .ruff_cache

# The project's main job, end to end, on this machine: the example site (example/) takes an
# upload through its form over real HTTP, django_resto replicates it to two local media
# servers (real nginx and lighttpd when installed, else its own TestHttpServer), then the
# demo prints each server's copy and the resto_sync audit, deletes it, and stops everything.
# DEMO_ARGS="--media-servers builtin" forces the built-in servers.
demo:
	scripts/system-packages --demo
	$(MAKE) venv
	$(VENV)/bin/python example/demo.py $(DEMO_ARGS)
