# Quick start: `make demo` reads the bundled sample clip into anpr.sqlite,
# `make test` runs the test suite. Each creates the virtual environment it needs.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test eval clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/anpr run samples/sample.mp4 --config configs/paris-fps.yaml --passages

test: $(STAMP)
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest

eval: $(STAMP)
	$(VENV)/bin/anpr eval ../shared/datasets/openalpr-eu

clean:
	rm -rf $(VENV) anpr.sqlite
