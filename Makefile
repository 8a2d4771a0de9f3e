# Quick start:  make demo   (export, build and benchmark the shipped model)   |   make test   (the test suite)
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

# lint-imports checks the one-way layering declared in pyproject.toml before the tests run.
test: venv
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The main job on the embedded default model: mixed-precision export, an offline-optimized
# ONNX Runtime build, and the benchmark table (also written to bench/results and bench/BENCHMARKS.md).
demo: venv
	$(BIN)/vggt-deploy export --model models/vggt_small --plan mixed -o build/demo
	$(BIN)/vggt-deploy build-ort --onnx build/demo/model.qdq.onnx -o build/demo/model.qdq.opt.onnx
	$(BIN)/vggt-deploy bench --model models/vggt_small

clean:
	rm -rf $(VENV) .pytest_cache
