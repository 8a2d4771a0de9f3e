# Quick start:  make demo   (evaluate the shipped model)   |   make test   (run the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: venv test demo clean

$(BIN)/vggt-deploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU torch first: a bare `torch` requirement could pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/vggt-deploy

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/vggt-deploy eval --model models/vggt_small

clean:
	rm -rf $(VENV) .pytest_cache
