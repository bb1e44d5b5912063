# The two commands a newcomer needs: `make run` and `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint unit integration audit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/finetune up

test: install
	$(VENV)/bin/ruff check app worker migrations tests benchmarks
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

lint: install
	$(VENV)/bin/ruff check app worker migrations tests benchmarks
	$(VENV)/bin/ruff format --check app worker migrations tests

# Side-by-side figures (minutes on a CPU); writes benchmarks/results.json.
bench: install
	$(PY) -m benchmarks.run --out benchmarks/results.json --results-md benchmarks/RESULTS.md

# Needs the vulnerability database (PyPI's per-release JSON or OSV) reachable.
audit: install
	$(VENV)/bin/pip freeze --exclude-editable > $(VENV)/requirements.lock
	$(VENV)/bin/pip-audit --requirement $(VENV)/requirements.lock --no-deps --disable-pip

clean:
	rm -rf var .pytest_cache
