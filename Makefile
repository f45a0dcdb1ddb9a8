PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve example test lint typecheck unit bench bench-bun-install clean

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

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
