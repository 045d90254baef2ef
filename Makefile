# Two entry points do all set-up: `make train` (the main job) and `make test`.
# Set-up = a virtual environment in .venv with fmnist installed, and the data set in place.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup data train test lint clean

# Reinstall when the project's metadata changes; the package itself is installed editable, with the
# optional extras (ONNX export, TensorBoard) so that their tests run too.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,onnx,tensorboard]'
	touch $@

setup: $(VENV)/.installed

# Found already? Else Debian's package (as root), else download. Fails with the ways to get it.
data: setup
	$(BIN)/fmnist data ensure

train: data
	$(BIN)/fmnist train $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: data lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
