# The two commands: `make test` and `make demo`. Both install what they need.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The digits demo (docs/demo.md): offline, on CPU, a few minutes on 2 cores; results in runs/demo.
# Over an earlier run's results: make demo DEMO_ARGS=--overwrite_output_dir
DEMO_ARGS ?=
.PHONY: demo
demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) experiments/demo_digits.py --output_dir runs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
