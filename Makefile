# Nethical mesh. `make demo` runs the all-in-one mesh; `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint protos bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[jit]'
	touch $@

# torch first, pinned: a bare `torch` requirement with nothing installed pulls a multi-GB
# CUDA build; with 2.13.0 in place the `gpu` extra (torch>=2.3) installs nothing more.
$(VENV)/.dev: $(VENV)/.core
	$(PIP) install --quiet 'torch==$(TORCH_VERSION)'
	$(PIP) install --quiet -e '.[all,dev]'
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
