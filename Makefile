# cml: Copy Machine LoRA training over kohya sd-scripts.
#   make demo       the whole method on the demo model at 64 px, with its copy check and sweep (CPU ok)
#   make test       the fast tier of the tests, real sd-scripts training included (skips, with the reason, without it)
#   make test-full  every test but SDXL's and the GPU's
#   make grayscale A=a.png [B=b.png] MODEL=model.safetensors [OUT=runs]
#   make test-gpu / make bench-gpu   on a CUDA machine: the article's recipe at 512 px (and SDXL at 1024 px)
#   make gpu-bundle, then on a CUDA machine without network: make gpu-offline
# Offline: make setup SD_SCRIPTS_SOURCE=/path/to/sd-scripts-clone-or-snapshot
# Another torch build (e.g. for an older NVIDIA driver): make setup TORCH_INDEX=https://download.pytorch.org/whl/cu124

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
SD_SCRIPTS_SOURCE ?=
OUT ?= runs
PY ?= $(VENV)/bin/python
# Installs go through uv (astral.sh/uv: on the 2-core machine torch took 18 s with it and 49 s with pip) and fall back
# to pip where uv cannot; INSTALLER=pip uses pip alone (uv reads no pip.conf: a private index may need pip)
INSTALLER ?= uv
# NO_SETUP=1: use PY as it is (a machine set up another way, e.g. by gpu-offline)
SETUP := $(if $(NO_SETUP),,setup)
# the GPU tests need pytest too (the offline bundle brings it)
GPU_TEST_SETUP := $(if $(NO_SETUP),,setup test-env)
GPU_SITE ?= /tmp/cml-gpu/site
GPU_BUNDLE ?= .gpu-bundle
# e.g. BENCH_GPU_ARGS="--only sdxl": a part of the GPU proof (a lease whose commands stop at 10 minutes)
BENCH_GPU_ARGS ?=
CML := $(PY) -m cml
SOURCE_ARG := $(if $(SD_SCRIPTS_SOURCE),--source "$(SD_SCRIPTS_SOURCE)")
# $(call install,ARGS): ARGS installed into the venv by cml/install.py (uv, pip where uv fails; INSTALLER=pip: pip);
# it needs only the standard library, so it runs before cml itself is installed
install = PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PY) -m cml.install $(if $(filter uv,$(INSTALLER)),,--pip) $(1)
# The venv is this checkout's own: Python keeps its bytecode cache there even where PYTHONDONTWRITEBYTECODE is set
# (else every stage's process compiles torch's, diffusers' and transformers' imports again: ~10 s each)
unexport PYTHONDONTWRITEBYTECODE
TORCH_STAMP := $(VENV)/.torch-$(subst /,_,$(subst :,_,$(subst $(eval) ,_,$(subst ==,-,$(TORCH) $(TORCH_INDEX)))))

.PHONY: setup setup-env test-env sd-scripts demo demo-world demo-world-article test test-full test-deps lint test-slow test-gpu grayscale bench bench-gpu gpu-proof gpu-bundle gpu-offline doctor clean

## the Python environment: venv, torch, cml (editable); quick when done
setup-env: $(TORCH_STAMP) $(VENV)/.cml-installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(if $(filter uv,$(INSTALLER)),$(PY) -m pip install -q uv || echo "make: uv could not be installed; pip installs instead")

$(TORCH_STAMP): | $(PY)
	$(call install,$(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	rm -f $(VENV)/.torch-* && touch $@

$(VENV)/.cml-installed: pyproject.toml | $(PY)
	$(call install,-e .)
	touch $@

## the test tools (pytest, ruff, mypy), for make test and make lint
test-env: setup-env $(VENV)/.cml-test-installed

$(VENV)/.cml-test-installed: pyproject.toml | $(PY)
	$(call install,-e '.[test]')
	touch $@

## sd-scripts at the pinned commit (submodule, or SD_SCRIPTS_SOURCE) and its pinned requirements
sd-scripts: setup-env
	$(CML) setup $(SOURCE_ARG) --deps

setup: sd-scripts

demo: setup
	$(CML) demo -o "$(OUT)"

## the method judged on other content: the world model (built once, 6-13 min on 2 cores), every difference LoRA swept on it
demo-world: setup
	$(CML) demo --world -o "$(OUT)"

## the world demo at the article's steps (copy 500, diff 500; every difference LoRA; ~46 min on 2 cores)
demo-world-article: setup
	$(CML) demo --world --preset "$(CURDIR)/bench/world/article.toml" -o "$(OUT)"

test-deps: test-env
	@$(CML) setup $(SOURCE_ARG) --deps || echo "make test: sd-scripts is not available; the tests that need it will be skipped (see their reason below)"
	@$(call install,--no-deps peft==0.14.0)  # diffusers' LoRA loading, for the loader test; its needs come with sd-scripts'

## the fast tier: unit and CLI tests against the fake sd-scripts, two at a time (no sd-scripts process among them),
## then, one at a time, one small run on the real sd-scripts shared by the tests that read it
FAKE_TESTS := tests/unit tests/cli
REAL_TESTS := tests/sdscripts tests/gpu tests/test_zz_user_cache.py

test: test-deps
	$(MAKE) lint PY=$(PY)
	$(PY) -m pytest -n 2 $(FAKE_TESTS)
	$(PY) -m pytest $(REAL_TESTS)

## everything but SDXL (make test-slow, alone: ~23 GB RAM) and the GPU tests (make test-gpu)
test-full: test-deps
	$(MAKE) lint PY=$(PY)
	$(PY) -m pytest -n 2 $(FAKE_TESTS) -m "not slow"
	$(PY) -m pytest $(REAL_TESTS) -m "not slow"

## ruff (lint and format) and mypy, configured in pyproject.toml
lint: test-env
	$(PY) -m ruff check cml tests
	$(PY) -m ruff format --check cml tests
	$(PY) -m mypy

test-slow: test-deps
	$(PY) -m pytest -m slow

## on a CUDA GPU: the article's recipe (SD1.5 512 px, 500 steps per stage; SDXL 1024 px); skips without CUDA
test-gpu: $(GPU_TEST_SETUP)
	$(PY) -m pytest -m gpu tests/gpu

bench-gpu: $(SETUP)
	$(PY) -m cml.dev.bench_gpu $(BENCH_GPU_ARGS)

## the GPU spent once: bench-gpu's runs, then test-gpu asserting on them
gpu-proof: $(GPU_TEST_SETUP)
	$(PY) -m cml.dev.bench_gpu $(BENCH_GPU_ARGS)
	CML_GPU_RESULTS=bench/results-gpu.json $(PY) -m pytest -m gpu tests/gpu

## wheels (GPU machine's Python 3.12), sd-scripts without .git and the project, for a CUDA machine without network
gpu-bundle: setup
	$(PY) -m cml.dev.bundle build

## on that machine (python3 with CUDA torch): install the bundle offline, then gpu-proof
gpu-offline:
	python3 -m cml.dev.bundle install --bundle $(GPU_BUNDLE) --site $(GPU_SITE)
	PYTHONPATH=$(GPU_SITE):$(CURDIR) CML_SD_SCRIPTS=$(dir $(GPU_SITE))sd-scripts HF_HUB_OFFLINE=1 \
	  $(MAKE) gpu-proof NO_SETUP=1 PY=python3

grayscale: setup
	@test -n "$(A)" || { echo "usage: make grayscale A=a.png [B=b.png] MODEL=model.safetensors [OUT=runs]"; exit 2; }
	@test -n "$(MODEL)" || { echo "make grayscale: set MODEL=path/to/checkpoint.safetensors"; exit 2; }
	$(CML) grayscale "$(A)" $(if $(B),"$(B)") --model "$(MODEL)" -o "$(OUT)"

## e.g. BENCH_ARGS="--only ops setup": parts of the bench (each keeps the others' results)
BENCH_ARGS ?=
bench: setup
	$(PY) -m cml.dev.bench $(BENCH_ARGS)

doctor: setup-env
	$(CML) doctor

clean:
	rm -rf $(VENV) .pytest_cache .test-cache
