# ISA4D — every target that needs the Python environment depends on `install`, so on a fresh
# machine `make test` or `make demo` does all set-up itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
LOCK := requirements/cpu.lock
# Dependencies live in a shared environment keyed by the lock file's content: clones with the same
# lock share it, and changing the lock builds a new one. Each clone then gets a small `.venv` of its
# own that sees the shared packages and holds this clone's editable install (so two clones never
# import each other's code).
LOCK_HASH := $(shell sha256sum $(LOCK) | cut -c1-12)
SHARED_VENV ?= $(HOME)/.cache/isa4d/venv-$(LOCK_HASH)
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=


.PHONY: help install lock test test-full test-slow lint format demo data train-vae train-dit generate \
	evaluate bench docker-build clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(SHARED_VENV)/.isa4d-deps: $(LOCK)
	@mkdir -p $(dir $(SHARED_VENV))
	@echo "Creating $(SHARED_VENV) from $(LOCK) (once per lock file; ~3 min)"
	flock $(SHARED_VENV).lock bash -c '\
	  set -e; test -f $@ && exit 0; rm -rf $(SHARED_VENV); $(PYTHON) -m venv $(SHARED_VENV); \
	  $(SHARED_VENV)/bin/python -m pip install -q --no-deps -r $(LOCK) 2> >(grep -v "is ignored" >&2); \
	  $(SHARED_VENV)/bin/python -m pip check; touch $@'

$(VENV)/.isa4d-$(LOCK_HASH): $(SHARED_VENV)/.isa4d-deps pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv --without-pip $(VENV)
	echo "import site; site.addsitedir('$(SHARED_VENV)/lib/python$(PY_VERSION)/site-packages')" \
	  > $(VENV)/lib/python$(PY_VERSION)/site-packages/isa4d_shared_env.pth
	$(SHARED_VENV)/bin/python -m pip --python $(PY) install -q --no-deps --no-build-isolation -e . \
	  2> >(grep -v "is ignored" >&2)
	touch $@

install: $(VENV)/.isa4d-$(LOCK_HASH) ## create the environment (idempotent) and install this clone into it
	@echo "Environment: $(VENV) (packages from $(SHARED_VENV))"

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
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(SHARED_VENV)/bin/hadolint docker/Dockerfile

format: install
	$(PY) -m ruff format src tests
	$(PY) -m ruff check --fix src tests

demo: install ## data -> VAE -> DiT -> a generated video (tiny configs, CPU)
	@echo "make demo: the stage-1/2 models are not implemented yet (README, 'Status'); nothing to run."; exit 2

# Datasets (paths as in conf/paths: ISA4D_DATA overrides ./data). Each is built once; a `.complete`
# stamp written after success makes reruns no-ops, and an interrupted build starts over.
DATA_DIR := $(or $(ISA4D_DATA),data)

data: $(DATA_DIR)/shards/real/.complete $(DATA_DIR)/shards/synth/.complete ## build the embedded datasets

$(DATA_DIR)/raw/vtest.avi $(DATA_DIR)/raw/bikes.mp4 &: | install
	ISA4D_PYTHON=$(PY) bash scripts/fetch_footage.sh $(DATA_DIR)/raw

$(DATA_DIR)/shards/real/.complete: $(DATA_DIR)/raw/vtest.avi $(DATA_DIR)/raw/bikes.mp4 | install
	$(VENV)/bin/isa4d footage overwrite=true
	touch $@

$(DATA_DIR)/shards/synth/.complete: | install
	$(VENV)/bin/isa4d synth overwrite=true
	touch $@

# The experiment of `make train-vae` (conf/experiment/); VAE_EXPERIMENT=vae_stage1_33f for the paper's stage 1.
VAE_EXPERIMENT ?= vae_tiny_cpu

train-vae: install data ## train the tiny VAE on CPU (VAE_EXPERIMENT=, ARGS= Hydra overrides)
	$(VENV)/bin/isa4d train-vae experiment=$(VAE_EXPERIMENT) $(ARGS)

train-dit: install ## train the tiny ISA-DiT on CPU (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d train-dit $(ARGS)

generate: install ## generate a video (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d generate $(ARGS)

evaluate: install ## evaluate a checkpoint (ARGS= Hydra overrides)
	$(VENV)/bin/isa4d evaluate $(ARGS)

# diffusers (the CogVideoX VAE peer of the VAE benchmark) is a bench-only dependency, installed into
# this clone's .venv (pyproject extra `bench`), not into the shared environment.
DIFFUSERS := diffusers==0.42.1

bench: install data ## benchmarks -> experiments/bench/*.json|md
	$(PY) -m isa4d.data.bench --config video
	$(PY) -m isa4d.data.bench --config human
	$(PY) -c "import diffusers" 2>/dev/null || $(SHARED_VENV)/bin/python -m pip --python $(PY) install -q "$(DIFFUSERS)"
	$(PY) -m isa4d.bench.vae

docker-build: ## build the GPU image (needs a Docker engine)
	docker build -f docker/Dockerfile -t isa4d:latest .

clean: ## remove run outputs (not the environment)
	rm -rf logs .pytest_cache .ruff_cache
