# Quick start: `make demo` (synthetic NSD + tiny models, CPU) and `make test`.
# Both create .venv and install the pinned dependencies (requirements.lock) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CORES  ?= 2
DEMO_CONFIG ?= config/demo.yaml
# tiny models: a demo job is mostly Python start-up (one thread), so run CORES jobs side by side
DEMO_THREADS ?= 1

.PHONY: venv demo test lint fmt dryrun unlock clean-demo help

help:
	@echo "make demo   - run the whole pipeline on the synthetic NSD with tiny random-weight models"
	@echo "make test   - unit + workflow tests, then make lint"
	@echo "make lint   - snakemake --lint, snakefmt --check, the import contract (lint-imports)"
	@echo "make dryrun - show the real-NSD DAG (config/config.yaml) without running it"
	@echo "make unlock - release the lock a killed run left behind (then rerun: unfinished jobs restart)"

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) --cores $(CORES) --max-threads $(DEMO_THREADS)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) --report results/report.html
	@echo "demo done: results/tables/, results/figures/, results/report.html (random-weight models: not real reconstructions)"

test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) lint

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile $(DEMO_CONFIG)
	$(BIN)/snakefmt --check Snakefile workflow/rules
	cd src && ../$(BIN)/lint-imports ../pyproject.toml --no-cache

fmt: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/rules

dryrun: $(STAMP)
	$(BIN)/snakemake -n --configfile config/config.yaml

unlock: $(STAMP)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) --unlock

clean-demo:
	rm -rf resources/demo results logs benchmarks
