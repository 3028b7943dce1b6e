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

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m utils.demo --output_dir demo_output --overwrite

clean:
	rm -rf demo_output .pytest_cache
