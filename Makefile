# `make demo` and `make test` create or refresh .venv on their own; both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit bench venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	test -f build/tiny-model/config.json || $(BIN)/python tools/make_tiny_model.py --out build/tiny-model
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mpiexec -n 2 $(BIN)/python -m randopt_hpc.run configs/demo.yaml output.overwrite=true

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	test -f build/tiny-model/config.json || $(BIN)/python tools/make_tiny_model.py --out build/tiny-model
	$(BIN)/python bench/bench_candidate.py configs/demo.yaml

clean:
	rm -rf $(VENV) build runs
