# litelang: `make serve` serves the default model, `make test` runs the tests; each installs what
# it needs into the interpreter PYTHON names (a virtual environment's, when one is active), at the
# versions in constraints.txt (tools/install.py).
PYTHON ?= python3
CONFIG ?= configs/default.yaml
MODEL_DIR := models/qwen2.5-coder-0.5b-instruct
PYTEST := $(PYTHON) -m pytest -p no:cacheprovider

.PHONY: install-serve install-test serve test test-fast test-gpu model proto lock bench clean

install-serve:
	@$(PYTHON) tools/install.py serve

install-test:
	@$(PYTHON) tools/install.py test

model: install-serve
	@echo "==> preparing the default model in $(MODEL_DIR)"
	$(PYTHON) -m litelang.tools.prepare_model --out $(MODEL_DIR)

serve: model
	@echo "==> starting litelang ($(CONFIG))"
	$(PYTHON) -m litelang.scheduler.launch $(CONFIG)

test: install-test model
	$(PYTEST) tests

test-fast: install-test
	$(PYTEST) -m "not gpu and not slow" tests

test-gpu:
	$(PYTEST) -m gpu tests

proto: install-test
	$(PYTHON) -m litelang.tools.gen_proto

# the newest versions pyproject's ranges allow, resolved in a fresh environment; then `make test`
lock:
	$(PYTHON) tools/install.py lock

# on a CUDA machine: kernel, model (vs HF transformers) and serving benchmarks, results in ./out
bench:
	bash bench/device_run.sh kernels model15 model7 serving

clean:
	rm -rf .cache build *.egg-info
