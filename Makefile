# One command each: `make demo` runs the demo, `make test` runs the tests. Both set themselves up.
# The set-up installs the exact versions in constraints.txt (`make lock` regenerates it from pyproject.toml's
# ranges and constraints.in; `make lock UPGRADE=1` also moves every pin to the newest release that fits).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := dev,plots,hf,tracking,trl,slurm
UV_VERSION := 0.13.9

.PHONY: setup demo test lint lock ends clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (set PY=/path/to/python3.11)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, on its own: pip takes the CPU build of 2.13.0 where one lies on disk, and everything after it
# finds torch installed and asks for no other build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt requirements-assets.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/slao demo

test: $(STAMP)
	$(BIN)/ruff check src tests tools examples
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests tools examples

$(BIN)/uv: $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)

lock: $(BIN)/uv
	$(BIN)/uv pip compile -q pyproject.toml constraints.in --all-extras --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock' \
		$(if $(UPGRADE),--upgrade) -o constraints.txt

# The lowest and the highest end of the ranges, each in its own environment (tools/test-ends.sh).
ends: $(BIN)/uv
	UV=$(BIN)/uv tools/test-ends.sh

clean:
	rm -rf $(VENV) runs .ends
