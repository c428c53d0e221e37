# litelang: `make serve` serves the default model, `make test` runs the tests; each installs what it needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CONFIG ?= configs/default.yaml
MODEL_DIR := models/qwen2.5-coder-0.5b-instruct
STAMP := .cache/installed.stamp

.PHONY: install serve test test-fast test-gpu model proto bench clean

# torch first, pinned to the CPU build on disk where there is one; a range that build satisfies
# keeps pip from pulling CUDA packages on CPU-only machines.
$(STAMP): pyproject.toml
	@mkdir -p .cache
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 || $(PIP) install "torch>=2.4,<3"
	$(PIP) install -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(PYTHON) -m litelang.tools.prepare_model --out $(MODEL_DIR)

serve: model
	litelang-launch $(CONFIG)

proto: $(STAMP)
	$(PYTHON) -m litelang.tools.gen_proto

test: model
	$(PYTHON) -m pytest -p no:cacheprovider tests kernels

test-fast: $(STAMP)
	$(PYTHON) -m pytest -p no:cacheprovider -m "not gpu and not slow" tests kernels

test-gpu:
	$(PYTHON) -m pytest -p no:cacheprovider -m gpu tests kernels

# on a CUDA machine: kernel, model (vs HF transformers) and serving benchmarks, results in ./out
bench:
	bash bench/device_run.sh kernels model15 model7 serving

clean:
	rm -rf .cache build *.egg-info
