# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv and installs the project on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# torch/torchvision releases that this machine type serves without a multi-GB download.
ifeq ($(shell uname -m),aarch64)
TORCH_PIN := torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/awp demo

# Every core runs tests (pytest-xdist), a test file per worker, so that a file's module-scoped
# fixtures are built once; `pytest` alone runs them one after another.
test: $(STAMP)
	@bash scripts/ensure_chromium.sh
	$(PY) -m pytest -n auto --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
