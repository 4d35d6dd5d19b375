# nnserve entry points. Every target creates the virtualenv from nothing when missing.
#   make run    train + export if the repository is empty, then serve both services
#   make test   lint, typecheck and the whole test suite (with the tools it needs)
#   make test-unit      the unit tests alone (tests/unit: no server, no training; seconds)
#   make images         the serving and trainer images (docker build)
#   make stack-test     the compose stacks built, started and checked in a Docker engine
# ORT=auto (default) installs onnxruntime-gpu where `nvidia-smi -L` lists a GPU, else the
# CPU onnxruntime; ORT=gpu or ORT=cpu forces one (bench/ort_build.sh decides).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REPOSITORY ?= model_repository
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Base image of the CPU images; any Debian-based Python 3.11 image works.
PYTHON_IMAGE ?= python:3.11-slim-bookworm
ORT ?= auto
ORT_BUILD := $(shell sh bench/ort_build.sh '$(ORT)')
ifeq ($(filter cpu gpu,$(ORT_BUILD)),)
$(error ORT must be auto, gpu or cpu (got '$(ORT)'))
endif
# The GPU build comes with the CUDA runtime and cuDNN wheels (extra `cuda`), so that the
# NVIDIA driver is meant to be all the machine needs. Both builds install into site-packages/onnxruntime, so an
# environment holds exactly one: when the other is there, both are removed and ours is
# installed whole. The stamp names the build, so changing ORT reinstalls.
ifeq ($(ORT_BUILD),gpu)
ORT_EXTRAS := gpu,cuda
ORT_PACKAGE := onnxruntime-gpu
ORT_OTHER := onnxruntime
else
ORT_EXTRAS := cpu
ORT_PACKAGE := onnxruntime
ORT_OTHER := onnxruntime-gpu
endif
STAMP := $(VENV)/.installed-$(ORT_BUILD)-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv train export models report serve serve-classify serve-sequence run test test-unit lint \
        typecheck protos bench bench-quick bench-peers bench-results bench-shadow soak soak-hostile perf-analyzer \
        gpu-check fuzz clean images image-serving \
        image-serving-gpu image-trainer stack-test

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if $(PY) -m pip show --quiet $(ORT_OTHER) >/dev/null 2>&1; then \
	  $(PY) -m pip uninstall --quiet --yes $(ORT_OTHER) $(ORT_PACKAGE); fi
	$(PY) -m pip install --quiet -e '.[$(ORT_EXTRAS),train,dev]'
	rm -f $(VENV)/.installed-* && touch $@
	@echo "ONNX Runtime build: $(ORT_BUILD) ($(ORT_PACKAGE), ORT=$(ORT))"

train: venv            ## train all five models into runs/
	$(PY) -m training --model all

export: venv           ## export every trained model as a new version (parity-gated)
	$(PY) -m export --model all --repository $(REPOSITORY)

models: venv           ## train + export only what the repository lacks
	$(PY) -m export --model all --if-missing --repository $(REPOSITORY)

report: venv           ## train every model on 3 seeds + measure each family's claim -> reports/training/
	$(PY) -m evaluation.report

serve-classify: models
	$(PY) -m services --service classify --repository $(REPOSITORY)

serve-sequence: models
	$(PY) -m services --service sequence --repository $(REPOSITORY)

serve: run             ## alias of run

run: models            ## both services on 50051/50052 (metrics 9091/9092) until Ctrl-C
	@trap 'kill -TERM $$c $$s 2>/dev/null; wait' INT TERM; \
	$(PY) -m services --service classify --repository $(REPOSITORY) & c=$$!; \
	$(PY) -m services --service sequence --repository $(REPOSITORY) & s=$$!; \
	wait

test: venv lint typecheck  ## lint, typecheck, then every test (tests/tools.sh: Debian's prometheus)
	bash tests/tools.sh
	$(PY) -m pytest -q

test-unit: venv        ## tests/unit only: no server, no trained model (seconds)
	$(PY) -m pytest -q tests/unit

fuzz: venv             ## a long hypothesis run against real servers (FUZZ_EXAMPLES per test)
	NNSERVE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q -s tests/service/test_fuzz.py

images: image-serving image-trainer   ## nnserve/serving and nnserve/trainer (docker build)

image-serving:
	docker build -f docker/serving.Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	    -t nnserve/serving:$(VERSION) .

image-trainer:
	docker build -f docker/trainer.Dockerfile --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
	    -t nnserve/trainer:$(VERSION) .

image-serving-gpu:     ## CUDA variant (onnxruntime-gpu)
	docker build -f docker/serving-gpu.Dockerfile -t nnserve/serving-gpu:$(VERSION) .

# Uses the running Docker engine, else starts a private dockerd (needs root, Debian's
# docker.io and debootstrap); skips loudly where no engine can run, fails so in CI.
stack-test: venv       ## compose stack + scale-out stack, built, started and checked
	NNSERVE_STACK_TEST=1 nice -n 10 $(PY) -m pytest -q -s -rs -m docker \
	    tests/stack/test_compose_stack.py tests/stack/test_compose_scale.py

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m tools.import_graph   # no import cycles, no arrows back up between packages

typecheck: venv
	$(PY) -m mypy contract services nnserve_client training export bench evaluation tools

protos: venv           ## regenerate protos/*_pb2*.py from protos/*.proto
	$(PY) -m protos.generate

bench: models          ## benchmark table, JSON and plots in bench/results/
	$(PY) -m bench --repository $(REPOSITORY)

bench-quick: models    ## a one-minute smoke benchmark of the mlp
	$(PY) -m bench --repository $(REPOSITORY) --quick --models mlp --concurrency 1,32

bench-peers: models    ## mlp on the no-op gRPC floor, nnserve, MLServer and Triton (peer envs made on first use)
	$(PY) -m bench.peers --repository $(REPOSITORY)

bench-results: models  ## bench-peers, then its report written to docs/benchmark-results.md (the published results)
	$(PY) -m bench.peers --repository $(REPOSITORY) --page docs/benchmark-results.md

bench-shadow: models   ## serving p50/p99 with a shadow version on vs off (same run, interleaved rounds)
	$(PY) -m bench.shadow --repository $(REPOSITORY)

soak: models           ## 10 minutes of load on the mlp: resident memory growth
	$(PY) -m bench --repository $(REPOSITORY) --soak 600

soak-hostile: models   ## 10 minutes of hostile traffic (bombs, deadline storms, junk, session churn): RSS, health < 100 ms, no INTERNAL
	$(PY) -m bench.hostile_soak --repository $(REPOSITORY) --duration $${SOAK_SECONDS:-600}

perf-analyzer: models  ## the benchmark plus Triton's perf_analyzer on the same points
	$(PY) -m bench --repository $(REPOSITORY) --perf-analyzer

gpu-check:             ## on a machine with an NVIDIA GPU: CUDA, goldens, parity, placement, throughput
	@test "$(ORT_BUILD)" = gpu || { echo "make gpu-check needs an NVIDIA GPU, and" \
	  "'nvidia-smi -L' lists none here (ORT=gpu forces the GPU build)" >&2; exit 1; }
	$(MAKE) --no-print-directory venv
	$(PY) -m bench.gpu_check --preflight
	$(MAKE) --no-print-directory models
	timeout 900 $(PY) -m bench.gpu_check --repository $(REPOSITORY)

clean:
	rm -rf runs $(REPOSITORY) reports bench/results .pytest_cache
