# The commands: `make test`, `make demo` and `make demo-text`. Each installs what it needs.
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

# The standard-library text experiment (docs/text_experiment.md): offline, on CPU, about 45 minutes on 2 cores;
# results in runs/demo_text. Over an earlier run's results: make demo-text DEMO_TEXT_ARGS=--overwrite_output_dir
DEMO_TEXT_ARGS ?=
.PHONY: demo-text
demo-text: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) experiments/text_stdlib.py --output_dir runs/demo_text $(DEMO_TEXT_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
