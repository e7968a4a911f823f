# Every target builds the environment it needs from scratch on a fresh machine.
# .venv       : development, training, export and tests (torch CPU wheel + onnxruntime CPU)
# .venv-serve : the serving environment exactly as deployed: no torch
PYTHON ?= python3
VENV := .venv
SERVE_VENV := .venv-serve
RUN ?= runs/demo
BUNDLE ?= $(if $(wildcard bundles/last),bundles/last,bundles/demo)

.PHONY: help venv serve-venv test-tools test demo serve lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[train,export,serve,cpu,dev]'
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve,cpu]'
	touch $@

venv: $(VENV)/.installed  ## create the development environment

serve-venv: $(SERVE_VENV)/.installed  ## create the torch-free serving environment

test-tools:  ## install Debian's prometheus for the Prometheus tests where possible (never fails)
	bash scripts/install_test_tools.sh

test: $(VENV)/.installed test-tools  ## set up and run the whole test suite
	$(VENV)/bin/python -m pytest

demo: $(VENV)/.installed $(SERVE_VENV)/.installed  ## set up and run the demo on the embedded synthetic data
	$(VENV)/bin/python scripts/demo.py --run $(RUN) --serve-python $(SERVE_VENV)/bin/python

serve: $(SERVE_VENV)/.installed  ## serve the last exported bundle (or the demo's)
	$(SERVE_VENV)/bin/python -m service --bundle $(BUNDLE)

lint: $(VENV)/.installed  ## ruff
	$(VENV)/bin/ruff check .

clean:  ## remove environments and generated outputs
	rm -rf $(VENV) $(SERVE_VENV) runs bundles demo_out .pytest_cache
