# visionq developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The ImageNet weights are used when torchvision's cache has them; offline machines
# fall back to seeded random weights (labels are then meaningless, the pipeline is not).
TORCH_CACHE := $(or $(TORCH_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/torch)
DEMO_WEIGHTS ?= $(if $(wildcard $(TORCH_CACHE)/hub/checkpoints/resnet18-f37072fd.pth),imagenet,random)

.PHONY: install demo test unit integration lint bench bench-gpu weights clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[worker,flower,dev]"
	touch $(STAMP)

demo: install
	@echo "visionq run samples/ with weights=$(DEMO_WEIGHTS)$(if $(filter random,$(DEMO_WEIGHTS)), (ImageNet weights not cached: run 'make weights' online for real labels))"
	$(VENV)/bin/visionq run samples/ --out demo-results.jsonl --weights $(DEMO_WEIGHTS)
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
	$(PY) -c "from torchvision.models import ResNet18_Weights as W; W.IMAGENET1K_V1.get_state_dict(progress=True)"

clean:
	rm -rf .bench .pytest_cache .ruff_cache demo-results.jsonl
