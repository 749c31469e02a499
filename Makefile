# The two commands of the README: `make demo` and `make test`.
# Both create .venv (Python 3.10+) and install the kernel and every plugin editable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
EXAMPLES := $(patsubst %/pyproject.toml,%,$(wildcard examples/*/pyproject.toml))
PORT ?= 6543

.PHONY: install test lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS) $(EXAMPLES) demo,-e $(p))

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/sessions-demo --port $(PORT)

bench: install
	$(PY) benchmarks/bench_requests.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
