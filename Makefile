# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# CPU defaults for a small shared machine; the caller's settings win.
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.gnn_irst.study --preset demo --out runs/demo

# Both cores (pytest-xdist), one test file per worker at a time, so a module-scoped fixture (a
# trained run, the tiny study) is built once. (--dist loadgroup would spread a file's tests, but
# pytest-xdist 3.8 cannot group under pytest 9: it rewrites a node id attribute pytest 9 ignores.)
PYTEST_PAR := -n 2 --dist loadfile

test: $(STAMP)
	$(BIN)/ruff check hepattr_jax tests benchmarks experiments
	$(BIN)/ruff format --check hepattr_jax tests benchmarks experiments
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_PAR) --durations=15

# The inner loop: everything but the end-to-end, subprocess and compile-heavy tests (marked slow).
test-fast: $(STAMP)
	$(BIN)/ruff check hepattr_jax tests benchmarks experiments
	$(BIN)/python -m pytest -q $(PYTEST_PAR) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check hepattr_jax tests benchmarks experiments
	$(BIN)/ruff format --check hepattr_jax tests benchmarks experiments
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/tracin_throughput.py --preset ref
	$(BIN)/python -m benchmarks.projection_throughput
	$(BIN)/python -m benchmarks.layer_capture
	$(BIN)/python -m benchmarks.kernel_profile

clean:
	rm -rf $(VENV) runs .pytest_cache
