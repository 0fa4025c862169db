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


.PHONY: help install lock test test-full test-slow lint format demo data train-vae train-dit latents generate \
	evaluate ablate bench docker-build clean

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

demo: install data ## data -> VAE -> DiT -> experiments/demo/demo.mp4 (tiny configs, CPU; trains what is missing)
	@test -n "$$($(NEWEST_VAE))" || $(MAKE) --no-print-directory train-vae ARGS=
	@test -n "$$($(NEWEST_DIT))" || $(MAKE) --no-print-directory train-dit ARGS=
	$(VENV)/bin/isa4d generate ckpt_path=$$($(NEWEST_DIT)) output=$(DEMO_OUT) $(DEMO_SCENE) $(ARGS)
	@echo "Demo video: $(DEMO_OUT)"

# Run folders (conf/paths: ISA4D_LOGS overrides ./logs); the newest checkpoint of each stage, looked up
# when a recipe runs (so a checkpoint trained earlier in the same `make` is found).
LOG_DIR := $(or $(ISA4D_LOGS),logs)
NEWEST_VAE = ls -t $(LOG_DIR)/train_vae/runs/*/checkpoints/last.ckpt 2>/dev/null | head -1
NEWEST_DIT = ls -t $(LOG_DIR)/train_dit/runs/*/checkpoints/last.ckpt 2>/dev/null | head -1
DEMO_OUT ?= experiments/demo/demo.mp4
# The demo's walk is generated in the reference clip's own scene (its static camera and background video, as
# in training); DEMO_SCENE= (or ARGS="camera=orbit background=null") asks for a new camera and no background.
DEMO_SCENE ?= camera=clip background=clip

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

# The experiment of `make train-dit`; its stage-1 VAE: VAE_CKPT=path, else the newest one (trained first
# with `make train-vae` when there is none).
DIT_EXPERIMENT ?= dit_tiny_cpu
# Its latent cache (docs/train_dit.md): `isa4d encode` of the synthetic train split with that VAE, built once
# per VAE checkpoint under $(DATA_DIR)/latents/<first 12 hex of its sha256>/<DIT_EXPERIMENT>[_<controls>]/
# (a `.complete` stamp makes reruns no-ops). DIT_LATENT_ARGS must give the data settings of DIT_EXPERIMENT
# (training refuses a cache of another VAE, resolution or frame count); the 2-D baselines need their control
# videos cached: DIT_CONTROL_VIDEOS=[normal,body] ARGS=+variant=controlnet_normal.
DIT_LATENT_ARGS ?= data.num_frames=21 data.resolution=64 num_versions=4
DIT_CONTROL_VIDEOS ?= []
comma := ,
DIT_CACHE = $(DATA_DIR)/latents/$$(sha256sum $(1) | cut -c1-12)/$(DIT_EXPERIMENT)$(subst $(comma),_,$(subst [,_,$(subst ],,$(filter-out [],$(DIT_CONTROL_VIDEOS)))))

train-dit: install data ## train the tiny ISA-DiT on CPU from its latent cache (DIT_EXPERIMENT=, VAE_CKPT=, ARGS= Hydra overrides)
	@test -n "$(VAE_CKPT)$$($(NEWEST_VAE))" || $(MAKE) --no-print-directory train-vae ARGS=
	@vae=$(or $(VAE_CKPT),$$($(NEWEST_VAE))) && $(MAKE) --no-print-directory latents VAE_CKPT=$$vae && \
	  set -x && $(VENV)/bin/isa4d train-dit experiment=$(DIT_EXPERIMENT) model.vae_ckpt=$$vae \
	  data.train_dirs=[$(call DIT_CACHE,$$vae)] $(ARGS)

latents: install data ## the latent cache of `make train-dit` for VAE_CKPT (default: the newest VAE)
	@vae=$(or $(VAE_CKPT),$$($(NEWEST_VAE))) && test -n "$$vae" || { echo "make latents: no VAE checkpoint (make train-vae)"; exit 2; }; \
	  $(MAKE) --no-print-directory $(call DIT_CACHE,$$vae)/.complete LATENT_VAE=$$vae

$(DATA_DIR)/latents/%/.complete:
	$(VENV)/bin/isa4d encode ckpt_path=$(LATENT_VAE) input_dir=$(DATA_DIR)/shards/synth output_dir=$(@D) \
	  control_videos=$(DIT_CONTROL_VIDEOS) overwrite=true $(DIT_LATENT_ARGS)
	touch $@

generate: install ## generate a video with the newest DiT checkpoint (DIT_CKPT=, ARGS= Hydra overrides)
	$(VENV)/bin/isa4d generate ckpt_path=$(or $(DIT_CKPT),$$($(NEWEST_DIT))) $(ARGS)

evaluate: install ## PSNR/SSIM/LPIPS/FVD of the newest VAE checkpoint (ARGS= Hydra overrides, e.g. mode=dit ckpt_path=...)
	@test -n "$(ARGS)$$($(NEWEST_VAE))" || { echo "make evaluate: no VAE checkpoint under $(LOG_DIR)/train_vae (run make train-vae, or pass ARGS='mode=... ckpt_path=...')"; exit 2; }
	$(VENV)/bin/isa4d evaluate $(or $(ARGS),mode=vae ckpt_path=$$($(NEWEST_VAE)))

# `make ablate` (docs/ablation.md): the tiny VAE with and without the image-decoding regularisation, the
# latent cache of the first (with the 2-D baselines' control videos), every DiT variant x seed at equal
# steps from that cache (experiment dit_ablate_cpu), the pose following of each job (isa4d evaluate mode=dit
# on ABLATE_EVAL_CLIPS clips of the video split, into <job>/eval/), then isa4d ablate-report, all under one
# sweep folder $(LOG_DIR)/ablate/<time>/. ABLATE_VAE_STEPS= / ABLATE_DIT_STEPS= shorten the
# runs (trainer.max_steps); ABLATE_SEEDS= the seeds; ARGS= goes to the DiT sweep (e.g. ARGS=+variant=isa,isa_no_pe).
# ABLATE_LANES=n runs n DiT sweeps side by side (seeds dealt round-robin, folders dit_lane<k>/, each with
# OMP_NUM_THREADS = cores / n, its output in dit_lane<k>.log). ABLATE_DIR=<an earlier sweep folder> reuses
# its VAE runs and cache where complete (the DiT sweep and evaluations run again). The report is written even
# when some DiT jobs failed (they are listed as failed); the target then fails.
ABLATE_DIR := $(LOG_DIR)/ablate/$(shell date +%Y-%m-%d_%H-%M-%S)
ABLATE_OUT ?= experiments/ablation
ABLATE_VAE_STEPS ?=
ABLATE_DIT_STEPS ?=
ABLATE_EVAL_CLIPS ?= 8
ABLATE_SEEDS ?= 1,2,3
ABLATE_LANES ?= 1
ABLATE_VAE = $(VENV)/bin/isa4d train-vae logger=many $(if $(ABLATE_VAE_STEPS),trainer.max_steps=$(ABLATE_VAE_STEPS))
ABLATE_DIT = $(VENV)/bin/isa4d train-dit -m experiment=dit_ablate_cpu \
  model.vae_ckpt=$(ABLATE_DIR)/vae_reg/checkpoints/last.ckpt data.train_dirs=[$(ABLATE_DIR)/latents] \
  $(if $(ABLATE_DIT_STEPS),trainer.max_steps=$(ABLATE_DIT_STEPS)) $(ARGS)

ablate: install data ## VAE reg/no-reg + DiT variants x seeds, equal steps -> experiments/ablation/ (~4 h CPU; ABLATE_SEEDS= ABLATE_LANES=)
	test -f $(ABLATE_DIR)/vae_reg/checkpoints/last.ckpt || $(ABLATE_VAE) experiment=vae_tiny_cpu hydra.run.dir=$(ABLATE_DIR)/vae_reg
	test -f $(ABLATE_DIR)/vae_no_reg/checkpoints/last.ckpt || \
	  $(ABLATE_VAE) experiment=vae_tiny_cpu_no_reg hydra.run.dir=$(ABLATE_DIR)/vae_no_reg
	test -f $(ABLATE_DIR)/latents/.complete || { $(VENV)/bin/isa4d encode overwrite=true \
	  ckpt_path=$(ABLATE_DIR)/vae_reg/checkpoints/last.ckpt input_dir=$(DATA_DIR)/shards/synth \
	  output_dir=$(ABLATE_DIR)/latents control_videos=[normal,body] $(DIT_LATENT_ARGS) && touch $(ABLATE_DIR)/latents/.complete; }
	status=0; pids=; lanes=$(ABLATE_LANES); threads=$$(( $$(nproc) / lanes )); \
	lane_run() { export OMP_NUM_THREADS=$$(( threads > 0 ? threads : 1 )); $(ABLATE_DIT) hydra.sweep.dir=$$1 seed=$$2; \
	  s=$$?; for job in $$1/*/; do test -f $$job/checkpoints/last.ckpt || continue; \
	    $(VENV)/bin/isa4d evaluate mode=dit ckpt_path=$$job/checkpoints/last.ckpt splits=[video] \
	      num_clips=$(ABLATE_EVAL_CLIPS) hydra.run.dir=$${job}eval || s=$$?; done; return $$s; }; \
	for lane in $$(seq 0 $$((lanes - 1))); do \
	  seeds=$$(tr , '\n' <<< "$(ABLATE_SEEDS)" | awk -v k=$$lane -v n=$$lanes '(NR - 1) % n == k' | paste -sd,); \
	  test -n "$$seeds" || continue; dir=$(ABLATE_DIR)/dit$$( ((lanes > 1)) && echo _lane$$lane); \
	  if ((lanes > 1)); then echo "DiT lane $$lane: seeds $$seeds -> $$dir.log"; lane_run $$dir $$seeds > $$dir.log 2>&1 & pids="$$pids $$!"; \
	  else lane_run $$dir $$seeds || status=$$?; fi; \
	done; for pid in $$pids; do wait $$pid || status=$$?; done; \
	$(VENV)/bin/isa4d ablate-report $(ABLATE_DIR) --out $(ABLATE_OUT) && exit $$status

# diffusers (the CogVideoX VAE peer of the VAE benchmark) is a bench-only dependency, installed into
# this clone's .venv (pyproject extra `bench`), not into the shared environment.
DIFFUSERS := diffusers==0.42.1

bench: install data ## benchmarks -> experiments/bench/*.json|md
	$(PY) -m isa4d.data.bench --config video
	$(PY) -m isa4d.data.bench --config human
	$(PY) -c "import diffusers" 2>/dev/null || $(SHARED_VENV)/bin/python -m pip --python $(PY) install -q "$(DIFFUSERS)"
	$(PY) -m isa4d.bench.vae
	$(PY) -m isa4d.bench.steps --dit-compare data=human
	$(PY) -m isa4d.bench.attention

docker-build: ## build the GPU image (needs a Docker engine)
	docker build -f docker/Dockerfile -t isa4d:latest .

clean: ## remove run outputs (not the environment)
	rm -rf logs .pytest_cache .ruff_cache
