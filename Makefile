# The two commands of the README: `make demo` and `make test`.
# Both create .venv (Python 3.10+) and install the kernel and every plugin editable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
EXAMPLES := $(patsubst %/pyproject.toml,%,$(wildcard examples/*/pyproject.toml))
PORT ?= 6543
# The suite runs on SQLite always and on these servers too (this machine's and CI's);
# a server that does not answer is skipped, and the end of the run says which databases
# ran. Set a URL to empty (make test SESSIONS_TEST_MARIADB_URL=) to skip that database;
# CI sets SESSIONS_TEST_REQUIRE_SERVERS=1 so that a missing server fails instead.
SESSIONS_TEST_POSTGRESQL_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
SESSIONS_TEST_MARIADB_URL ?= mariadb+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4
export SESSIONS_TEST_POSTGRESQL_URL SESSIONS_TEST_MARIADB_URL

# Installed once; again only when a project file changes (editable installs see code edits).
STAMP := $(VENV)/.installed
PROJECTS := pyproject.toml $(PLUGINS:%=%/pyproject.toml) $(EXAMPLES:%=%/pyproject.toml) demo/pyproject.toml

.PHONY: install test lint typecheck docs demo bench dist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PROJECTS) | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]' $(foreach p,$(PLUGINS) $(EXAMPLES),-e $(p)) -e 'demo[test]'
	touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# mypy over the kernel and the plugins' packages, as [tool.mypy] in pyproject.toml lists them.
typecheck: install
	$(VENV)/bin/mypy

docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint typecheck docs
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/sessions-demo --port $(PORT)

bench: install
	$(PY) benchmarks/bench_requests.py $(BENCH_ARGS)

# Wheels of the kernel and of every plugin, into dist/ (pip install dist/*.whl elsewhere).
dist: install
	rm -rf dist
	$(PY) -m pip wheel -q --no-deps -w dist . $(PLUGINS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache dist build
