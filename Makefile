# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
#
# TORCH_SPEC picks the torch build installed when the venv has no torch yet.
# The default is the pinned CPU build; on a GPU machine use e.g.
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean docs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/widenets demo --out out/demo --overwrite

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation site (MkDocs + mkdocstrings) into site/; strict: any warning fails.
docs: install
	$(PY) -m mkdocs build --strict

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache
