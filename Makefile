# The two commands of the README: `make run` (main job) and `make test` (the suite). Both set up
# .venv first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := WANDB_MODE=$${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTEST_ARGS ?= -q -n 2   # two pytest-xdist workers of one thread each (tests/conftest.py); -q alone: one process

.PHONY: setup test run demo lint

setup:
	VENV=$(VENV) bash scripts/setup.sh

test: setup
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# main job: Amazon pipeline, meta-teacher trained until its dev accuracy stops improving -> per domain a Meta-KD
# student beside a no-KD student of the same size -> per-domain report (runs/main_job/main_job.md)
run: setup
	$(OFFLINE) $(PY) -m metakd pipeline --config configs/amazon/main_job.yaml

# one domain end to end: quick meta-teacher -> books student -> export (HF + ONNX) -> transformers.pipeline
demo: setup
	$(OFFLINE) bash scripts/quick_amazon.sh
