# The two commands of the README: `make run` (main job) and `make test` (the suite). Both set up
# .venv first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := WANDB_MODE=$${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PYTEST_ARGS ?= -q

.PHONY: setup test run lint

setup:
	VENV=$(VENV) bash scripts/setup.sh

test: setup
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

run: setup
	$(OFFLINE) bash scripts/quick_amazon.sh
