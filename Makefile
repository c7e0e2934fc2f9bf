# Set-up is part of every target: the virtual environment .venv/ is created or refreshed when
# pyproject.toml changed (a stamp file records the last install), then the target runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lab clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ibdml needs Python 3.11 (torch 2.14.1 wheels); set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# jupyter-events pulls in rfc3987-syntax, which adds ~4 s to every `import papermill`.
	$(BIN)/python -m pip uninstall --quiet --yes rfc3987-syntax
	$(BIN)/python -m ipykernel install --sys-prefix --name ibdml --display-name "Python (ibdml)" >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ibdml run params/glyphs.yaml --out outputs/glyphs

test: $(STAMP)
	$(BIN)/python -m pytest

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
