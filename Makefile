# cml: Copy Machine LoRA training over kohya sd-scripts.
#   make demo     the whole pipeline on a random SD1.5-architecture model at 64 px (CPU ok)
#   make test     the test suite (sd-scripts tests skip, with the reason, when sd-scripts is absent)
#   make grayscale A=a.png [B=b.png] MODEL=model.safetensors [OUT=runs]
# Offline: make setup SD_SCRIPTS_SOURCE=/path/to/sd-scripts-clone-or-snapshot

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
SD_SCRIPTS_SOURCE ?=
OUT ?= runs
PY := $(VENV)/bin/python
CML := $(PY) -m cml
SOURCE_ARG := $(if $(SD_SCRIPTS_SOURCE),--source "$(SD_SCRIPTS_SOURCE)")
TORCH_STAMP := $(VENV)/.torch-$(subst $(eval) ,_,$(subst ==,-,$(TORCH)))

.PHONY: setup setup-env sd-scripts demo test test-slow grayscale bench doctor clean

## the Python environment: venv, torch, cml (editable) with its test tools; quick when done
setup-env: $(TORCH_STAMP) $(VENV)/.cml-installed

$(PY):
	$(PYTHON) -m venv $(VENV)

$(TORCH_STAMP): | $(PY)
	$(PY) -m pip install -q $(TORCH)
	rm -f $(VENV)/.torch-* && touch $@

$(VENV)/.cml-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## sd-scripts at the pinned commit (submodule, or SD_SCRIPTS_SOURCE) and its pinned requirements
sd-scripts: setup-env
	$(CML) setup $(SOURCE_ARG) --deps

setup: sd-scripts

demo: setup
	$(CML) demo -o "$(OUT)"

test: setup-env
	@$(CML) setup $(SOURCE_ARG) --deps || echo "make test: sd-scripts is not available; the tests that need it will be skipped (see their reason below)"
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

grayscale: setup
	@test -n "$(A)" || { echo "usage: make grayscale A=a.png [B=b.png] MODEL=model.safetensors [OUT=runs]"; exit 2; }
	@test -n "$(MODEL)" || { echo "make grayscale: set MODEL=path/to/checkpoint.safetensors"; exit 2; }
	$(CML) grayscale "$(A)" $(if $(B),"$(B)") --model "$(MODEL)" -o "$(OUT)"

bench: setup
	$(PY) -m cml.bench

doctor: setup-env
	$(CML) doctor

clean:
	rm -rf $(VENV) .pytest_cache
