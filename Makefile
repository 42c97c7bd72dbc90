# One virtual environment in .venv; every target sets it up first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo lint benchmarks benchmarks-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/qsr demo $(ARGS)

# Accuracy and speed against other quantizers and QAT libraries; see benchmarks/README.md.
benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

benchmarks-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
