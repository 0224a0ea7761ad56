# The two commands of the README. Both do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the releases the offline mirror holds (see README).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: run test test-fast bench setup data lint leaderboard

$(BIN)/tlbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/tlbench

# Debian's Fashion-MNIST package, when we are root with apt; otherwise say why not.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "fashion: found /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "fashion: could not install dataset-fashion-mnist; fashion cells will be skipped"; \
	else \
	  echo "fashion: not root or no apt-get: install dataset-fashion-mnist or pass --data-dir; fashion cells will be skipped"; \
	fi

# The main job: the embedded offline default (efficientnet_lite0, 4 strategies + scratch row).
run: setup data
	$(BIN)/tlbench run

test: setup
	$(BIN)/python -m pytest -q --ignore=tests/benchmarks

# While developing: everything but the end-to-end tests marked slow (make test runs all).
test-fast: setup
	$(BIN)/python -m pytest -q --ignore=tests/benchmarks -m "not slow"

bench: setup
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only

lint: setup
	$(BIN)/ruff check tlbench tests

leaderboard: setup
	$(BIN)/tlbench leaderboard
