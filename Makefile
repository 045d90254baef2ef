# Two entry points do all set-up: `make train` (the main job) and `make test`.
# Set-up = a virtual environment in .venv with fmnist installed, and the data set in place.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup data browser train test lint screenshot clean

# Reinstall when the project's metadata changes; the package itself is installed editable, with the
# optional extras (ONNX export, TensorBoard, serve, Optuna for `fmnist tune`, pandas for load_runs, MLflow) so
# that their tests run too.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,onnx,tensorboard,serve,tune,pandas,mlflow,explain]'
	touch $@

setup: $(VENV)/.installed

# Found already? Else Debian's package (as root), else download. Fails with the ways to get it.
data: setup
	$(BIN)/fmnist data ensure

# The browser test of `fmnist serve` drives Debian's chromium package (never `playwright install`,
# whose downloads fail offline). As root, install it when missing; otherwise say how, and the test
# fails with the same advice.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; \
	else echo "make: the browser test needs chromium: sudo apt-get install chromium"; fi

train: data
	$(BIN)/fmnist train $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

# One pytest worker per core (pytest-xdist), each test module whole on one worker so that its
# trained fixtures are made once, the longest modules handed out first (conftest.py's LONGEST_FILES);
# conftest.py gives each worker one thread. The suite runs once: a test that fails, even now and
# then, fails the target (nothing is rerun to hide a flaky test).
test: data lint browser
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder --max-worker-restart 1 --durations 15

# docs/serve.png: the page as the browser test sees it.
screenshot: data browser
	FMNIST_SCREENSHOT=docs/serve.png $(BIN)/python -m pytest -q tests/test_serve_live.py -k browser

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
