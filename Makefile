# nnserve entry points. Every target creates the virtualenv from nothing when missing.
#   make run    train + export if the repository is empty, then serve both services
#   make test   the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
REPOSITORY ?= model_repository

.PHONY: venv train export models report serve serve-classify serve-sequence run test lint typecheck \
        protos bench bench-quick soak perf-analyzer gpu-check clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,train,dev]'
	rm -f $(VENV)/.installed-* && touch $@

train: venv            ## train all five models into runs/
	$(PY) -m training --model all

export: venv           ## export every trained model as a new version (parity-gated)
	$(PY) -m export --model all --repository $(REPOSITORY)

models: venv           ## train + export only what the repository lacks
	$(PY) -m export --model all --if-missing --repository $(REPOSITORY)

report: venv           ## train every model on 3 seeds + measure each family's claim -> reports/training/
	$(PY) -m training.report

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

test: venv             ## the whole test suite
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy services training export bench

protos: venv           ## regenerate protos/*_pb2*.py from protos/*.proto
	$(PY) -m protos.generate

bench: models          ## benchmark table, JSON and plots in bench/results/
	$(PY) -m bench --repository $(REPOSITORY)

bench-quick: models    ## a one-minute smoke benchmark of the mlp
	$(PY) -m bench --repository $(REPOSITORY) --quick --models mlp --concurrency 1,32

soak: models           ## 10 minutes of load on the mlp: resident memory growth
	$(PY) -m bench --repository $(REPOSITORY) --soak 600

perf-analyzer: models  ## the benchmark plus Triton's perf_analyzer on the same points
	$(PY) -m bench --repository $(REPOSITORY) --perf-analyzer

gpu-check: models      ## on a machine with an NVIDIA GPU and onnxruntime-gpu
	timeout 900 $(PY) -m bench.gpu_check --repository $(REPOSITORY)

clean:
	rm -rf runs $(REPOSITORY) reports bench/results .pytest_cache
