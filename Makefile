# Two commands: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo clean

# Then this repository, editable (pyproject.toml): scripts in task folders import its packages as they are.
$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make: $(PYTHON) is Python %d.%d; medvt needs 3.11 or newer (onnxruntime 1.32 has no wheel for older ones): run make PYTHON=python3.11 ..." % sys.version_info[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# The suite mixes one-thread tests with child processes: two workers (pytest-xdist; a test file stays on one
# worker, so its module fixtures run once) finish it about 1.5x sooner on CI's 2 cores than one process.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: setup
	$(PY) -m utils.demo --output_dir demo_output --overwrite

clean:
	rm -rf demo_output .pytest_cache
