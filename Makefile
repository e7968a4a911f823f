# Every target builds the environment it needs from scratch on a fresh machine.
# .venv       : development, training, export and tests (torch CPU wheel + onnxruntime CPU)
# .venv-serve : the serving environment exactly as deployed: no torch, every version and hash from
#               requirements/serve-cpu.lock (the Docker image installs requirements/serve-gpu.lock)
PYTHON ?= python3
VENV := .venv
SERVE_VENV := .venv-serve
RUN ?= runs/demo
BUNDLE ?= $(if $(wildcard bundles/last),bundles/last,bundles/demo)

SERVE_LOCKS := requirements/serve-cpu.lock requirements/serve-gpu.lock

.PHONY: help venv serve-venv lock test-tools test demo serve lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[train,export,serve,cpu,dev]'
	touch $@

$(SERVE_VENV)/.installed: pyproject.toml requirements/serve-cpu.lock
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --require-hashes -r requirements/serve-cpu.lock
	$(SERVE_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed  ## create the development environment

serve-venv: $(SERVE_VENV)/.installed  ## create the torch-free serving environment from its lock

lock: $(VENV)/.installed  ## re-pin requirements/serve-{cpu,gpu}.lock (with hashes) after changing pyproject.toml
	for flavour in cpu gpu; do CUSTOM_COMPILE_COMMAND="make lock" \
	  $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links \
	    --extra serve --extra $$flavour --output-file requirements/serve-$$flavour.lock pyproject.toml; \
	done

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
