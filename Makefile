# ISA4D — every target that needs the Python environment depends on `install`, so on a fresh
# machine `make test` or `make demo` does all set-up itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
LOCK := requirements/cpu.lock
# The environment is keyed by the lock file's content: clones with the same lock share it, and
# changing the lock builds a new one. Override VENV to put it elsewhere.
LOCK_HASH := $(shell sha256sum $(LOCK) | cut -c1-12)
VENV ?= $(HOME)/.cache/isa4d/venv-$(LOCK_HASH)
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: help install lock test test-full test-slow lint format demo data train-vae train-dit generate \
	evaluate bench docker-build clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(VENV)/.isa4d-deps: $(LOCK)
	@mkdir -p $(dir $(VENV))
	@echo "Creating $(VENV) from $(LOCK) (once per lock file; ~3 min)"
	flock $(VENV).lock bash -c '\
	  set -e; test -f $@ && exit 0; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q --no-deps -r $(LOCK); \
	  $(PY) -m pip check; touch $@'

install: $(VENV)/.isa4d-deps ## create the environment (idempotent) and install this clone into it
	@if [ "$$($(PY) -c 'import isa4d, pathlib; print(pathlib.Path(isa4d.__file__).parent)' 2>/dev/null)" \
	     != "$(CURDIR)/src/isa4d" ]; then \
	  $(PY) -m pip install -q --no-deps --no-build-isolation -e . ; fi
	@ln -sfn $(VENV) .venv
	@echo "Environment: $(VENV) (linked as .venv)"

lock: ## regenerate requirements/cpu.lock from pyproject.toml in a fresh environment
	rm -rf /tmp/isa4d-lock && $(PYTHON) -m venv /tmp/isa4d-lock
	/tmp/isa4d-lock/bin/pip install -q --upgrade pip
	/tmp/isa4d-lock/bin/pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[dev]"
	{ sed -n '1,3p' $(LOCK); /tmp/isa4d-lock/bin/pip freeze --all --exclude-editable | grep -v '^-e'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

test: install ## fast test suite (no `slow` tests)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-slow: install ## only the `slow` tests
	$(PY) -m pytest -m slow $(ARGS) || [ $$? -eq 5 ]

test-full: install ## every test
	$(PY) -m pytest $(ARGS)

lint: install ## ruff (code) and hadolint (Dockerfile)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/hadolint docker/Dockerfile

format: install
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

demo: install ## data -> VAE -> DiT -> a generated video (tiny configs, CPU)
	@echo "make demo: the stage-1/2 models are not implemented yet (README, 'Status'); nothing to run."; exit 2

data: install ## build the embedded datasets
	$(VENV)/bin/isa4d prepare $(ARGS)

train-vae: install ## train the tiny VAE on CPU (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d train-vae $(ARGS)

train-dit: install ## train the tiny ISA-DiT on CPU (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d train-dit $(ARGS)

generate: install ## generate a video (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d generate $(ARGS)

evaluate: install ## evaluate a checkpoint (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d evaluate $(ARGS)

bench: install ## benchmarks -> experiments/bench/*.json|md
	@echo "make bench: no benchmarks yet (they arrive with the data and model stages)."

docker-build: ## build the GPU image (needs a Docker engine)
	docker build -f docker/Dockerfile -t isa4d:latest .

clean: ## remove run outputs (not the environment)
	rm -rf logs .pytest_cache .ruff_cache
