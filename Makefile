# make demo   -- the whole study at demo scale on built-in synthetic data (CPU, about 10 minutes)
# make test   -- lint, then the test suite (CPU, a few minutes)
# make test TORCH=2.11.0 -- the same in a venv of its own with that torch (.venv-torch2.11.0; the GPU machine's)
# make lint   -- ruff check and ruff format --check; make format rewrites the code
# make paper DATA=/path/to/data SEEDS="0 1 2"  -- the paper's full configuration per seed (meant for a GPU)
# make gpu-check DATA=/path/to/sample     -- the prepared first check on a GPU machine (system python3, no venv)
PYTHON ?= python3
TORCH ?=
VENV := .venv$(if $(TORCH),-torch$(TORCH))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

# Demo scale: 32x32 glyphs, 32 filters, 400 meta-iterations; everything else is the paper's setting.
# At this size the grouped task batching measured faster than the loop on a 2-core CPU (bench.py).
# Sized for about 10 minutes on a 2-core CPU (RESULTS.md, Demo).
DEMO_FLAGS := --image-size 32 --hidden 32 --synthetic-per-class 60 --iterations 400 --eval-every 200 \
              --val-tasks 100 --test-tasks 200 --task-batching grouped
DEMO_PROBE := --iterations 800 --queries 5

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
	$(PY) maml.py $(DEMO_FLAGS) --out runs/demo/maml
	$(PY) maml.py $(DEMO_FLAGS) --learn-lr --out runs/demo/metasgd
	$(PY) probe.py runs/demo/maml/best.pt $(DEMO_PROBE)
	$(PY) probe.py runs/demo/metasgd/best.pt $(DEMO_PROBE)
	$(PY) analyze.py runs/demo/maml runs/demo/metasgd --out report/demo
	@echo "demo report: report/demo/report.md"

# make paper DATA=... SEEDS="0 1 2": both methods, all seeds of a method in one process (--seeds),
# each best.pt probed, one report over all seeds. PAPER_FLAGS and PROBE_FLAGS add flags (e.g. --clip-grad 10,
# --no-conv-bias); RUNS and REPORT move the outputs. Run folders: $(RUNS)/<method>/seed<s>.
SEEDS ?= 0
PAPER_FLAGS ?=
PROBE_FLAGS ?=
RUNS ?= runs/paper
REPORT ?= report/paper

paper: $(STAMP)
	@test -n "$(DATA)" || { echo 'usage: make paper DATA=/path/to/data [SEEDS="0 1 2"]'; exit 2; }
	$(PY) maml.py --data $(DATA) $(PAPER_FLAGS) --seeds $(SEEDS) --out $(RUNS)/maml
	$(PY) maml.py --data $(DATA) $(PAPER_FLAGS) --seeds $(SEEDS) --out $(RUNS)/metasgd --learn-lr
	for run in $(foreach seed,$(SEEDS),$(RUNS)/maml/seed$(seed) $(RUNS)/metasgd/seed$(seed)); do \
	  $(PY) probe.py $$run/best.pt --data $(DATA) $(PROBE_FLAGS) || exit 1; \
	done
	$(PY) analyze.py $(foreach seed,$(SEEDS),$(RUNS)/maml/seed$(seed) $(RUNS)/metasgd/seed$(seed)) --out $(REPORT)
	@echo "report: $(REPORT)/report.md"

gpu-check:
	@test -n "$(DATA)" || { echo "usage: make gpu-check DATA=/path/to/mini-imagenet-sample"; exit 2; }
	$(PYTHON) gpu_check.py $(DATA)
