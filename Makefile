# tensorgate's commands. The two to know: `make serve` and `make test`.
# Every target builds the virtual environment in .venv from nothing when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUNS   := runs
REPOSITORY := $(or $(TENSORGATE_REPOSITORY),model_repository)
MODELS := mlp resnet transformer
# torch goes in first, at the exact version pyproject.toml pins: asked for by another
# package first, pip would pull the newest torch with several GB of CUDA wheels.
TORCH  := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')

.DEFAULT_GOAL := help
.PHONY: help venv serve test test-fast train export loadtest bench docker image-test lint format clean

help:
	@echo "make serve      build .venv, train and export the models if the repository is empty, serve"
	@echo "make test       build .venv and run the whole test suite (full training included)"
	@echo "make test-fast  the test suite without the full training runs"
	@echo "make train      train every model into $(RUNS)/ (python -m training --help)"
	@echo "make export     export every model as a new version in $(REPOSITORY)/, training what is missing"
	@echo "make loadtest   a 30 s locust run with SLO gates against a fresh service (LOADTEST_ARGS=...)"
	@echo "make bench      the side-by-side benchmark (1.5-3 hours on 2 cores; needs wrk) -> docs/benchmarks/"
	@echo "make docker     build the images tensorgate:cuda and tensorgate:cpu (needs a Docker engine)"
	@echo "make image-test build the CPU image with buildah, no Docker engine, and serve from it (root)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make format    ruff check --fix and ruff format: what make lint asks for"
	@echo "make clean      remove .venv, $(RUNS)/ and caches"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

$(RUNS)/%/checkpoint.pt: | $(STAMP)
	$(PY) -m training --model $* --out $(RUNS)

train: $(STAMP)
	$(PY) -m training --model all --out $(RUNS)

export: $(foreach m,$(MODELS),$(RUNS)/$(m)/checkpoint.pt)
	$(PY) -m export --model all --runs $(RUNS) --repository $(REPOSITORY)

serve: $(STAMP)
	@if [ -z "$$(ls -A $(REPOSITORY) 2>/dev/null)" ]; then $(MAKE) --no-print-directory export; fi
	TENSORGATE_REPOSITORY=$(REPOSITORY) $(PY) -m service

# e.g. make loadtest LOADTEST_ARGS="--users 32 --duration 2m --tags resnet"
loadtest: $(STAMP)
	@if [ -z "$$(ls -A $(REPOSITORY) 2>/dev/null)" ]; then $(MAKE) --no-print-directory export; fi
	$(PY) -m load_tests --repository $(REPOSITORY) $(LOADTEST_ARGS)

bench: $(STAMP) $(foreach m,$(MODELS),$(RUNS)/$(m)/checkpoint.pt)
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install wrk" >&2; exit 1; }
	@if [ -z "$$(ls -A $(REPOSITORY) 2>/dev/null)" ]; then $(MAKE) --no-print-directory export; fi
	$(PY) -m benchmarks --runs $(RUNS) --repository $(REPOSITORY) --out docs/benchmarks

docker:
	@docker info >/dev/null 2>&1 || { echo "make docker needs a running Docker engine; none answers here" >&2; exit 1; }
	docker build -t tensorgate:cuda .
	docker build --build-arg VARIANT=cpu -t tensorgate:cpu .

# Needs root, buildah and debootstrap (apt-get install buildah debootstrap); about 4 minutes.
image-test: $(STAMP)
	$(PY) deploy/image_test.py

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(RUNS) reports .pytest_cache .ruff_cache *.egg-info
	@echo "kept $(REPOSITORY)/: exported versions are never deleted by make; remove it by hand"
