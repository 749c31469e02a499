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

.PHONY: install test lint typecheck docs demo bench dist dist-check test-pythons clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PROJECTS) | $(PY)
	$(PY) -m pip install -q -e '.[test,bench,release,docs]' $(foreach p,$(PLUGINS) $(EXAMPLES),-e $(p)) -e 'demo[test]'
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

# What a user installs: the wheels and sdists of the kernel and every plugin, built with
# `python -m build` (isolated: it fetches setuptools>=77 from the index) and checked
# (twine check, check-wheel-contents, what must be inside), then installed alone into a
# fresh venv outside the checkout that runs a smoke application and a generated plugin's
# tests. See scripts/dist-check.
dist-check: install
	scripts/dist-check $(PY)

# The SQLite suite on the oldest and the newest supported Python, each in its own venv
# (.venv-3.10, .venv-3.13; installed as `make install` does, again when a project file
# changes). The database servers' URLs are emptied (their tests skip) and the cluster
# tests are left out, as is the demo's browser test (a browser, not Python, is under test).
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PYTHONS ?= $(lastword $(wildcard $(PYENV_ROOT)/versions/3.10.*/bin/python)) \
	$(lastword $(wildcard $(PYENV_ROOT)/versions/3.13.*/bin/python))
test-pythons:
	@test -n "$(strip $(PYTHONS))" || { echo "no Python 3.10 or 3.13 under $(PYENV_ROOT)/versions: set PYTHONS=/path/to/python3.10 ..."; exit 1; }
	@set -e; for py in $(PYTHONS); do \
	    start=$$(date +%s); \
	    v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	    venv=.venv-$$v; \
	    if [ ! -x $$venv/bin/python ]; then $$py -m venv $$venv; $$venv/bin/python -m pip install -q --upgrade pip; fi; \
	    if [ -z "$$(find $(PROJECTS) -newer $$venv/.installed 2>/dev/null)" ] && [ -e $$venv/.installed ]; then :; else \
	        $$venv/bin/python -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS) $(EXAMPLES),-e $(p)) -e demo; \
	        touch $$venv/.installed; fi; \
	    echo "== Python $$v ($$py): the SQLite suite"; \
	    SESSIONS_TEST_POSTGRESQL_URL= SESSIONS_TEST_MARIADB_URL= SESSIONS_TEST_GALERA_URL= \
	    SESSIONS_TEST_REQUIRE_SERVERS= $$venv/bin/pytest -q -p no:cacheprovider -m 'not cluster' \
	        --ignore=demo/tests/test_demo_browser.py $(PYTEST_ARGS); \
	    echo "== Python $$v: $$(( $$(date +%s) - start )) s"; \
	done

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .ruff_cache .mypy_cache dist build
