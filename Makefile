# Two commands: `make test` and `make demo`. Each one sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A run starts many interpreters (kernels, shells, spawned workers), each importing parmagic:
# they read its bytecode, compiled here first, even where PYTHONDONTWRITEBYTECODE keeps Python
# from writing it as it imports (and so compiling every module again in every interpreter).
BYTECODE := $(BIN)/python -m compileall -q parmagic tests

.PHONY: test test-fast test-pythons test-colab demo bench screenshots lint setup clean

setup: $(STAMP)

# pip stays quiet; a line before each step says what the wait is for.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { \
	  echo "make: creating the virtual environment $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV); }
	@echo "make: installing parmagic and what its tests and demos use into $(VENV)" \
	  "(JupyterLab, dask, ...: this can take a couple of minutes)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@echo "make: registering $(VENV)'s Python as the Jupyter kernel python3 (inside $(VENV))"
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "make: $(VENV) is ready"

test: $(STAMP)
	$(BIN)/ruff check parmagic tests demo_notebooks bench tools
	@$(BYTECODE)
	$(BIN)/python -m pytest

# The inner loop while developing: everything but real kernels, terminals, clusters, fuzzing,
# the stress matrix and spawn/forkserver variants (tests/conftest.py marks those slow).
test-fast: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python -m pytest -m "not slow"

# The whole suite on every CPython 3.11+ on this machine, each in a venv of its own (.venvs/).
test-pythons: $(STAMP)
	$(BIN)/python tools/test_pythons.py

# Google Colab's pinned stack (tools/stacks/colab.txt) on CPython 3.13, in .venvs/colab.
test-colab: $(STAMP)
	$(BIN)/python tools/test_pythons.py --stack colab -- --ignore=tests/test_jupyterlab.py

demo: $(STAMP)
	@echo "make: running the notebooks in demo_notebooks/ one by one through a Jupyter kernel" \
	  "(a minute or so); each cell's output follows its notebook"
	@$(BYTECODE)
	@$(BIN)/python demo_notebooks/run_demos.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@$(BYTECODE)
	$(BIN)/python bench/kernel_objects.py
	$(BIN)/python bench/hidden_state.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/honesty.py
	$(BIN)/python bench/per_item.py > bench/per_item.md

# The README's JupyterLab pictures, taken by the browser test (needs /usr/bin/chromium).
screenshots: $(STAMP)
	PARMAGIC_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -n 0 tests/test_jupyterlab.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build
