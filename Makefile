# Quick start: `make demo` reads the bundled sample clip into anpr.sqlite,
# `make test` runs the test suite. Each creates the virtual environment it needs.
# `make lint` runs the linter, the format check, the type checker and `make docs` (the reference
# site in docs/, built strictly); CI runs it first;
# `make test-unit` runs the unit tests alone (no model weights, no servers: under a minute).
# `make train-ocr` retrains the plate reader (models/platereader.onnx) from the crop sets' train splits.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint docs format eval train-ocr clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[test,lint,train,cluster]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/anpr run samples/sample.mp4 --config configs/paris-fps.yaml --passages

test: $(STAMP)
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest

test-unit: $(STAMP)
	ANPR_MODELS_DIR="$$(mktemp -d)" $(VENV)/bin/python -m pytest -m unit

lint: $(STAMP) docs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The reference site (docs/, mkdocs.yml) into build/site; --strict: a broken link or a page
# missing from the navigation fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

eval: $(STAMP)
	$(VENV)/bin/anpr eval ../shared/datasets/openalpr-eu

# Fine-tunes the plate reader into models/platereader.onnx (120 min on 2 cores, resumable:
# `python -m training.reader --steps 2800 --resume`; models/README.md). PlateNet: python -m training.train.
train-ocr: $(STAMP)
	$(VENV)/bin/python -m training.reader --steps 2800 --camera scene

clean:
	rm -rf $(VENV) anpr.sqlite
