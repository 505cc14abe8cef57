# visionq developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `make demo` fetches the ImageNet weights (hash-checked) into torchvision's cache, or checks
# the copy already there, and shows real labels. Only when they cannot be downloaded (an
# offline machine) does it fall back to seeded random weights, and it says so: the labels
# are then meaningless, the pipeline is not. DEMO_WEIGHTS=<file|random> skips the fetch.
DEMO_WEIGHTS ?=

.PHONY: install demo test unit integration lint bench bench-gpu weights clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[worker,flower,dev]"
	touch $(STAMP)

demo: install
	@weights="$(DEMO_WEIGHTS)"; \
	if [ -z "$$weights" ]; then \
		VISIONQ_WEIGHTS=imagenet $(PY) -m workers.weights >/dev/null; rc=$$?; \
		if [ $$rc -eq 0 ]; then weights=imagenet; \
		elif [ $$rc -eq 2 ]; then weights=random; \
			echo "OFFLINE: the ImageNet weights cannot be downloaded, so this demo uses random weights and its labels are meaningless; run 'make weights' online for real labels"; \
		else exit $$rc; fi; \
	fi; \
	echo "visionq run samples/ with weights=$$weights"; \
	$(VENV)/bin/visionq run samples/ --out demo-results.jsonl --weights $$weights
	@$(PY) -c "import json; [print(r['path'].rsplit('/',1)[-1], '->', r['top_k'][0]['label'] if r['ok'] else r['error']) for r in map(json.loads, open('demo-results.jsonl'))]"

test: install
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m benchmarks

# One GPU, about 5-8 minutes; writes docs/benchmarks-gpu.md. Without CUDA it says so, exits 0.
bench-gpu: install
	$(PY) -m benchmarks.gpu

weights: install
	VISIONQ_WEIGHTS=imagenet $(PY) -m workers.weights

clean:
	rm -rf .bench .pytest_cache .ruff_cache demo-results.jsonl
