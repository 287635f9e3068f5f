# kaizen: two commands on a fresh machine. `make demo` runs the main job, `make test` the tests; both set up
# the virtual environment first (Python 3.11+, packages from the registry, nothing installed by hand).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install browser postgres demo test test-fast lint typecheck clean up down

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

# Local Prefect and MLflow servers for this workspace (127.0.0.1, ports in params.yaml `servers`); `down` stops
# exactly the processes `up` started.
up: install
	$(VENV)/bin/kaizen up

down:
	$(VENV)/bin/kaizen down

# Headless Chromium (Debian's package) for the test that screenshots the MLflow UI; installed when running
# as root with apt, else that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the MLflow UI screenshot test will be skipped"

# PostgreSQL (Debian's package) for the tests of the shared set-up: they start a private server on a loopback
# port. Installed when running as root with apt, else those tests are skipped and say why.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "postgresql not installed: the tests of the shared set-up will be skipped"

# Two workers, one test file each at a time (a file's module fixtures stay in one process), in the order the
# files are collected (tests/conftest.py puts the longest first; xdist would otherwise start the files with the
# most tests first). Most tests wait on servers and subprocesses, so two workers beat one even on 2 cores.
WORKERS ?= 2
test: install browser postgres
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install postgres
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

lint: install typecheck
	$(VENV)/bin/ruff check .

# mypy on the installed package's layout (kaizen.tasks is tasks/, kaizen.flows is flows/): a folder of links
# shows mypy that layout, which the editable install's import hook hides from it.
typecheck: install
	@mkdir -p build/typecheck/kaizen
	@ln -sfn ../../../kaizen/__init__.py build/typecheck/kaizen/__init__.py
	@ln -sfn ../../../tasks build/typecheck/kaizen/tasks
	@ln -sfn ../../../flows build/typecheck/kaizen/flows
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p kaizen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
