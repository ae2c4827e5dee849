# Nethical mesh. `make demo` runs the all-in-one mesh; `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint protos bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[jit]'
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install --quiet -e '.[jit,dev]'
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/nethical-mesh demo $(ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

protos: $(VENV)/.dev
	$(PY) scripts/gen_protos.py

bench: $(VENV)/.dev
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
