# kaizen: two commands on a fresh machine. `make demo` runs the main job, `make test` the tests; both set up
# the virtual environment first (Python 3.11+, packages from the registry, nothing installed by hand).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint clean

# torch first, exactly 2.13.0: on a CPU machine that is the local CPU wheel, and installing it before the
# rest stops accelerate from pulling a multi-GB CUDA build. On a GPU machine install a CUDA build of
# torch 2.13.0 into $(VENV) first (README); this step then keeps it.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/kaizen demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
