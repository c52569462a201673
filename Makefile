# shoprec: `make demo` and `make test` work on a fresh clone with nothing but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DATA ?=
PRESET ?=

.PHONY: venv demo test ui lint typecheck check clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the package metadata changed (idempotent and fast when done).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/shoprec demo --workdir $(DEMO_DIR) $(if $(DATA),--data $(DATA)) $(if $(PRESET),--preset $(PRESET))

test: $(STAMP)
	$(PY) -m pytest -q

ui: $(STAMP)
	$(VENV)/bin/shoprec ui

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests serving
	$(VENV)/bin/ruff format --check src tests serving

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
