# make demo   -- the whole study at demo scale, four methods, on built-in synthetic data (CPU, about 10 minutes)
# make test   -- lint, then the test suite (CPU, a few minutes)
# make test TORCH=2.11.0 -- the same in a venv of its own with that torch (.venv-torch2.11.0; the GPU machine's)
# make lint   -- ruff check and ruff format --check; make format rewrites the code
# make paper SEEDS="0 1 2"  -- the paper's full configuration per seed on Mini-ImageNet, fetched by name (a GPU)
# make paper DATA=/path/to/data  -- the same on a dataset folder, or on DATA=omniglot
# make paper DATA=... METHODS="maml metasgd anil boil"  -- with ANIL and BOIL beside the paper's two
# make gpu-check DATA=/path/to/sample     -- the prepared first check on a GPU machine (system python3, no venv)
PYTHON ?= python3
TORCH ?=
VENV := .venv$(if $(TORCH),-torch$(TORCH))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

# Demo scale: 32x32 glyphs, 32 filters, 250 meta-iterations, four methods (MAML, Meta-SGD, ANIL, BOIL), each
# probed with the per-layer CKA; everything else is the paper's setting. At this size the grouped task batching
# measured faster than the loop on a 2-core CPU (bench.py). Sized for about 10 minutes on a 2-core CPU
# (RESULTS.md, Demo); the two-method demo of 400 iterations took as long.
DEMO_FLAGS := --image-size 32 --hidden 32 --synthetic-per-class 60 --iterations 250 --eval-every 125 \
              --val-tasks 60 --test-tasks 150 --task-batching grouped
DEMO_PROBE := --iterations 250 --queries 5 --similarity
DEMO_METHODS := maml metasgd anil boil

# Methods are named as maml.py's --method takes them (flags.METHODS; `python maml.py --help` lists them).
# The Makefile keeps no list of its own.

.PHONY: test lint format demo paper gpu-check

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	sed '$(if $(TORCH),s/^torch==.*/torch==$(TORCH)/)' requirements.txt > $(VENV)/requirements.txt
	$(VENV)/bin/pip install -q -r $(VENV)/requirements.txt
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q tests

demo: $(STAMP)
	rm -rf runs/demo
	$(foreach m,$(DEMO_METHODS),$(PY) maml.py $(DEMO_FLAGS) --method $(m) --out runs/demo/$(m) &&) true
	$(foreach m,$(DEMO_METHODS),$(PY) probe.py runs/demo/$(m)/best.pt $(DEMO_PROBE) &&) true
	$(PY) analyze.py $(addprefix runs/demo/,$(DEMO_METHODS)) --out report/demo
	@echo "demo report: report/demo/report.md"

# make paper [DATA=...] SEEDS="0 1 2": each method, all its seeds in one process (--seeds), each best.pt
# probed (with the per-layer CKA, --similarity), one report over all seeds. METHODS picks the methods (the
# paper's two by default; any that maml.py --method takes). PAPER_FLAGS and PROBE_FLAGS add flags (e.g.
# --clip-grad 10, --no-conv-bias); RUNS and REPORT move the outputs. Run folders: $(RUNS)/<method>/seed<s>.
SEEDS ?= 0
METHODS ?= maml metasgd
PAPER_FLAGS ?=
PROBE_FLAGS ?=
RUNS ?= runs/paper
REPORT ?= report/paper
# No DATA: Mini-ImageNet by name (fetched and verified on first use, fetch.py); DATA given empty is refused.
PAPER_DATA = $(if $(filter undefined,$(origin DATA)),mini-imagenet,$(DATA))
PAPER_RUNS = $(foreach seed,$(SEEDS),$(foreach m,$(METHODS),$(RUNS)/$(m)/seed$(seed)))

paper: $(STAMP)
	@# DATA is checked by make itself, before the shell sees it: it reaches the commands in single quotes
	@$(if $(PAPER_DATA),true,echo 'DATA is empty: give a dataset folder or name (DATA=omniglot), or leave DATA out for mini-imagenet' >&2; exit 2)
	@$(if $(findstring ',$(PAPER_DATA))$(findstring ",$(PAPER_DATA)),echo 'DATA may not hold a quote (the commands quote it): link the folder from a path without one' >&2; exit 2,true)
	@test -n "$(strip $(METHODS))" || { echo 'METHODS is empty: name at least one method (maml.py --help, --method)' >&2; exit 2; }
	@test -n "$(strip $(RUNS))" -a -n "$(strip $(REPORT))" || { echo 'RUNS and REPORT may not be empty: they are the folders of the runs and the report' >&2; exit 2; }
	@test "$(words $(RUNS) $(REPORT))" = 2 || { echo 'RUNS and REPORT may not hold a space (make splits words there); DATA may' >&2; exit 2; }
	@test "$(words $(METHODS))" = "$(words $(sort $(METHODS)))" || { echo 'METHODS names a method twice ($(strip $(METHODS))): each trains into $(RUNS)/<method>, so name each once' >&2; exit 2; }
	@# every method's flags parsed as maml.py parses them, in one process, before any training: an unknown
	@# --method, or a flag in PAPER_FLAGS that contradicts one of the methods, ends here in one line
	@$(PY) -c 'import sys, cli, flags; [cli.run_cli(flags.parse, [*sys.argv[2:], "--method", m]) for m in sys.argv[1].split()]' '$(METHODS)' $(PAPER_FLAGS)
	$(foreach m,$(METHODS),$(PY) maml.py --data '$(PAPER_DATA)' $(PAPER_FLAGS) --seeds $(SEEDS) --out $(RUNS)/$(m) --method $(m) &&) true
	for run in $(PAPER_RUNS); do \
	  $(PY) probe.py $$run/best.pt --data '$(PAPER_DATA)' --similarity $(PROBE_FLAGS) || exit 1; \
	done
	$(PY) analyze.py $(PAPER_RUNS) --out $(REPORT)
	@echo "report: $(REPORT)/report.md"

gpu-check:
	@test -n "$(DATA)" || { echo "usage: make gpu-check DATA=/path/to/mini-imagenet-sample" >&2; exit 2; }
	$(PYTHON) gpu_check.py '$(DATA)'
