PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve example test lint typecheck unit bench bench-bun-install reference clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/systemx serve

# Against a running exchange (`make serve` in another terminal).
example: $(STAMP)
	$(BIN)/python examples/simple_client.py

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy --strict src
	$(BIN)/mypy benchmarks tests
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/systemx bench relay

# Bun for the optional Bun baseline (`python -m benchmarks relay --bun`), in .bench/.
bench-bun-install:
	mkdir -p .bench
	npm install --prefix .bench bun@1.4.5

# The reference (Bun) router for the interop tests (tests/interop/), in .bench/reference:
# the public repository with its trimphone submodule, and its dependencies.
REFERENCE_DIR ?= .bench/reference
REFERENCE_REPO ?= https://github.com/Foundation42/SystemX.git
LOCAL_BUN := .bench/node_modules/.bin/bun

reference:
	test -x $(LOCAL_BUN) || $(MAKE) bench-bun-install
	test -d $(REFERENCE_DIR)/.git || git clone --recurse-submodules $(REFERENCE_REPO) $(REFERENCE_DIR)
	git -C $(REFERENCE_DIR) submodule update --init
	cd $(REFERENCE_DIR) && $(abspath $(LOCAL_BUN)) install
	@echo "Now: export SYSTEMX_REFERENCE_DIR=$(abspath $(REFERENCE_DIR))"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
