# Set-up is part of every target: the virtual environment .venv/ is created or refreshed when
# pyproject.toml changed (a stamp file records the last install), then the target runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: setup run test bench claims lab clean-venv

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

# The benchmarks (bench/run_all.py writes bench/RESULTS.md; ~22 min on 2 cores,
# a third of it the pipeline that `make run` runs, timed 3 times). The bench extra
# (pytorch-metric-learning, the reference for evaluation; the test extra pins it too) is installed
# once, and again only after pyproject.toml changed; `make run` never needs it.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	@# pip brings rfc3987-syntax back with the project's dependencies: remove it again (see above).
	$(BIN)/python -m pip uninstall --quiet --yes rfc3987-syntax
	touch $(BENCH_STAMP)

# The paper's three claims in miniature and the MPN ablation: CE-only, MPN and the MPN with
# uniform and with self attention, over seeds 0-4 on Glyphs (notebooks/05_claims; 20 runs, the
# time measured is in docs/results.md) into outputs/claims/claims.json.
claims: $(STAMP)
	$(BIN)/ibdml claims params/glyphs.yaml --out outputs/claims --seeds 0 1 2 3 4

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
