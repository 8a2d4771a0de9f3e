# Quick start:  make demo   (export, build and benchmark the shipped model)   |   make test   (the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

DEMO := build/demo

.PHONY: venv test demo publish-bench clean

$(BIN)/vggt-deploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# setuptools in the venv: tests/test_install.py builds the wheel with `python -m build --no-isolation`
	# (Python 3.12+ venvs come without it).
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77"
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
# ONNX Runtime build, and the benchmark table. Everything lands under $(DEMO)/ (results in
# $(DEMO)/results, rendered as $(DEMO)/BENCHMARKS.md); tracked files are left alone.
demo: venv
	$(BIN)/vggt-deploy export --model models/vggt_small --plan mixed -o $(DEMO)
	$(BIN)/vggt-deploy build-ort --onnx $(DEMO)/model.qdq.onnx -o $(DEMO)/model.qdq.opt.onnx
	$(BIN)/vggt-deploy bench --model models/vggt_small --build-dir $(DEMO)/bench --results-dir $(DEMO)/results

# Make the last `make demo` run the published benchmark: copies its results into bench/results
# and re-renders bench/BENCHMARKS.md (review the diff before committing it).
publish-bench: venv
	$(BIN)/vggt-deploy bench-publish --from $(DEMO)/results --to bench/results

clean:
	rm -rf $(VENV) .pytest_cache
