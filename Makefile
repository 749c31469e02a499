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
# sessions-migrate's tests create pyramid_session_redis sessions in this Redis (database 15,
# keys under a prefix of each test's own)
SESSIONS_TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export SESSIONS_TEST_POSTGRESQL_URL SESSIONS_TEST_MARIADB_URL SESSIONS_TEST_REDIS_URL

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
# tests are left out, as is the demo's browser test (a browser, not Python, is under test),
# and the modules of TEST_PYTHONS_SKIP below. Each Python runs even when the other failed.
# A Python is pyenv's newest X.Y.Z, else pythonX.Y on the PATH (or set PYTHONS=...);
# one that is missing fails the target in CI (CI or SESSIONS_TEST_REQUIRE_SERVERS set, as
# .ci/run does) and is skipped with a message elsewhere.
TEST_PYTHON_VERSIONS ?= 3.10 3.13
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
python_of = $(or $(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python 2>/dev/null \
	| grep -E '/$(subst .,\.,$(1))\.[0-9]+/bin/python$$' | sort -V | tail -n 1),$\
	$(shell command -v python$(1) 2>/dev/null))
PYTHONS ?= $(foreach v,$(TEST_PYTHON_VERSIONS),$(call python_of,$(v)))
MISSING_PYTHONS = $(if $(filter command line environment,$(origin PYTHONS)),,$\
	$(foreach v,$(TEST_PYTHON_VERSIONS),$(if $(call python_of,$(v)),,$(v))))
# Left out of test-pythons (`make test` runs them all on Python 3.11 and every database),
# chosen by time on this 2-core machine (seconds per Python, 3.10 / 3.13, both at once
# with other jobs; then 3.10 alone, load 3.5: 116 s for the venv + 572 s of tests):
# - only load and time can fail them: the benchmarks' scripts (350 / 354: valgrind, whose
#   instruction count hit its 300 s timeout) and smoke test (84 / 64), the pytest plugin's
#   probes of closed ports (45 / 42), the hypothesis merge model (50 / 34), the cookie's
#   few thousand requests (81 / 60);
# - the slowest that do not depend on the Python version, to stay near 20 minutes for
#   both: renewal's theft simulations (54, alone), the Sphinx build of the docs (22, alone;
#   `make docs` builds them), the cache's hypothesis state machine (13, alone).
TEST_PYTHONS_SKIP ?= \
	tests/test_benchmark_scripts.py \
	tests/test_benchmark_smoke.py \
	tests/test_pytest_plugin.py \
	tests/test_merge_model.py \
	tests/test_cookie_resend.py::test_no_growth_over_a_few_thousand_requests \
	plugins/renewal/tests/test_renewal_attacks.py \
	tests/test_docs_build.py \
	plugins/cache/tests/test_store.py::test_fills_never_outlive_a_delivered_change
test-pythons:
	@if [ -n "$(strip $(MISSING_PYTHONS))" ]; then \
	    msg="make test-pythons: no Python $(strip $(MISSING_PYTHONS)) in $(PYENV_ROOT)/versions/ nor on the PATH: install it (pyenv install $(strip $(MISSING_PYTHONS))) or name the interpreters (make test-pythons PYTHONS='/path/to/python3.10 /path/to/python3.13')"; \
	    case "$${CI:-}" in ""|0|false) ci=;; *) ci=1;; esac; \
	    case "$${SESSIONS_TEST_REQUIRE_SERVERS:-}" in ""|0) ;; *) ci=1;; esac; \
	    if [ -n "$$ci" ]; then echo "$$msg" >&2; exit 1; fi; \
	    echo "$$msg; skipped here (in CI, where CI or SESSIONS_TEST_REQUIRE_SERVERS is set, it fails)"; \
	fi
	@failed=; for py in $(PYTHONS); do \
	    start=$$(date +%s); \
	    v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { failed="$$failed $$py"; continue; }; \
	    venv=.venv-$$v; \
	    if [ ! -x $$venv/bin/python ]; then $$py -m venv $$venv && $$venv/bin/python -m pip install -q --upgrade pip || { failed="$$failed $$v"; continue; }; fi; \
	    if [ -z "$$(find $(PROJECTS) -newer $$venv/.installed 2>/dev/null)" ] && [ -e $$venv/.installed ]; then :; else \
	        $$venv/bin/python -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS) $(EXAMPLES),-e $(p)) -e demo \
	        && touch $$venv/.installed || { failed="$$failed $$v"; continue; }; fi; \
	    echo "== Python $$v ($$py): the SQLite suite"; \
	    SESSIONS_TEST_POSTGRESQL_URL= SESSIONS_TEST_MARIADB_URL= SESSIONS_TEST_GALERA_URL= SESSIONS_TEST_REDIS_URL= \
	    SESSIONS_TEST_REQUIRE_SERVERS= $$venv/bin/pytest -q -p no:cacheprovider -m 'not cluster' \
	        --ignore=demo/tests/test_demo_browser.py $(foreach t,$(TEST_PYTHONS_SKIP),$(if $(findstring ::,$(t)),--deselect=$(t),--ignore=$(t))) $(PYTEST_ARGS) \
	        || failed="$$failed $$v"; \
	    echo "== Python $$v: $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "== make test-pythons failed on Python$$failed" >&2; exit 1; fi

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .ruff_cache .mypy_cache dist build
