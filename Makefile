# Two commands do everything on a fresh machine:
#   make demo   set up, build sample snapshots in a local folder, restore one through the flow
#   make test   set up (Python packages, SeaweedFS, Chromium) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench system-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/memrestore demo

test: setup system-deps
	$(BIN)/python -m pytest

system-deps:
	@bash .ci/system-deps chromium rclone b3sum time sqlite3

bench: setup system-deps
	$(BIN)/python -m benchmarks
