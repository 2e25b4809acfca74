# lstm-forecast: every target installs what it needs (libtorch, Python tools) by itself.
#   make run     serve the bundled ETTh1 model on http://127.0.0.1:8080
#   make test    the whole test suite
#   make bench   benchmarks, printed as tables
#   make model   re-train the bundled model (installs full PyTorch, ~4.7 GB, into ~/.cache)
#   make test-fresh  make test on a fresh clone of HEAD with an empty cache (what a new machine does)

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Everything the targets download or install (libtorch, wheels, venvs, pip's own cache) lives here;
# the scripts read the same variable.
LSTM_FORECAST_CACHE ?= $(HOME)/.cache/lstm-forecast
export LSTM_FORECAST_CACHE
CACHE       := $(LSTM_FORECAST_CACHE)
LIBTORCH    := .libtorch
ONNXRUNTIME := .onnxruntime
TRAIN_VENV  := $(CACHE)/train-venv
PYTHON      ?= python3
CARGO       ?= cargo
# Arguments for `make run`, e.g. make run ARGS="--bind 0.0.0.0:8080"
ARGS        ?=

.PHONY: help run test test-fresh openapi bench bench-peers soak fuzz model libtorch onnxruntime tools toolchain build release image-rootfs deploy fmt clippy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
	@command -v $(PYTHON) >/dev/null || { echo "python3 not found: it is needed to fetch libtorch from PyPI" >&2; exit 1; }

# A CPU libtorch built from the PyPI torch wheel, cached under $(CACHE) and linked here as .libtorch
# (.cargo/config.toml points LIBTORCH at it). Re-linked on every run (a no-op when cached), so a
# different LSTM_FORECAST_CACHE really gets its own.
libtorch: toolchain ## Fetch the CPU libtorch (cached, once per machine)
	@dest="$$(scripts/fetch-libtorch.sh)" && ln -sfn "$$dest" $(LIBTORCH)
	@test -f $(LIBTORCH)/build-version

# ONNX Runtime's C library from the PyPI wheel, cached under $(CACHE) and linked here as
# .onnxruntime: the ONNX Runtime engine opens it at run time (src/model/onnx.rs). Without it
# the server still serves, on libtorch alone, and says so.
onnxruntime: toolchain ## Fetch ONNX Runtime's library (cached, once per machine)
	@dest="$$(scripts/fetch-onnxruntime.sh)" && ln -sfn "$$dest" $(ONNXRUNTIME)
	@test -f $(ONNXRUNTIME)/lib/libonnxruntime.so

# Emulators and linters the tests start themselves (moto, ministack, cargo-lambda, cfn-lint, ...), in a cached
# venv, and promtool from Debian.
# Installed from hash-checked locks (scripts/lock-python.sh regenerates them), then checked: a
# missing tool is named in one line before cargo starts.
tools: toolchain ## Install the test tools (cached)
	@scripts/system-tools.sh
	@scripts/check-tools.sh "$$(scripts/python-tools.sh)"

build: libtorch onnxruntime ## Debug build
	$(CARGO) build --locked

openapi: libtorch onnxruntime ## Regenerate docs/openapi.json from the code (a test fails when it is stale)
	$(CARGO) run --quiet --locked -- openapi > docs/openapi.json

release: libtorch onnxruntime ## Optimised build (target/release/lstm-forecast)
	$(CARGO) build --locked --release

image-rootfs: release ## Assemble the container image's files under target/image-rootfs (what the Dockerfile copies)
	scripts/build-image-rootfs.sh target/image-rootfs

# Needs AWS credentials, the SAM CLI and Docker: it cannot run in the offline development sandbox.
deploy: ## sam build + sam deploy (image pushed to ECR); see README "Deploying"
	@if [ -z "$$AWS_ACCESS_KEY_ID$$AWS_PROFILE$$AWS_WEB_IDENTITY_TOKEN_FILE$$AWS_CONTAINER_CREDENTIALS_FULL_URI$$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" ] \
	    && [ ! -f "$$HOME/.aws/credentials" ] && [ ! -f "$$HOME/.aws/config" ]; then \
	  echo "make deploy: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run 'aws configure')" >&2; exit 1; fi
	@command -v sam >/dev/null || { echo "make deploy: the AWS SAM CLI is missing (pip install aws-sam-cli)" >&2; exit 1; }
	@command -v docker >/dev/null || { echo "make deploy: Docker is needed to build the image" >&2; exit 1; }
	sam build --config-file infra/samconfig.toml
	sam deploy --config-file infra/samconfig.toml $(DEPLOY_ARGS)

run: release ## Serve the bundled model on 127.0.0.1:8080 (no AWS needed); ctrl-c stops it
	./target/release/lstm-forecast serve $(ARGS)

test: libtorch onnxruntime tools ## Run every test
	LSTM_FORECAST_TOOLS="$$(scripts/python-tools.sh)" $(CARGO) test --locked

# What a new machine does: a fresh clone of HEAD (committed work only), an empty LSTM_FORECAST_CACHE
# and an empty cargo home, so no download or install step can hide behind a warm cache. Only the
# Rust toolchain, python3 and Debian packages (promtool, patchelf) come from the machine.
test-fresh: ## make test on a fresh clone of HEAD with empty caches (~8 min on 2 cores)
	@scratch="$$(mktemp -d)" && echo "test-fresh: in $$scratch" \
	  && git clone -q . "$$scratch/clone" \
	  && cd "$$scratch/clone" \
	  && LSTM_FORECAST_CACHE="$$scratch/cache" CARGO_HOME="$$scratch/cargo-home" \
	     PATH="$$(dirname "$$(command -v $(CARGO))"):$$PATH" $(MAKE) test \
	  && echo "test-fresh: passed; remove $$scratch when done"

bench: libtorch onnxruntime tools ## Benchmarks (release build), printed as tables
	LSTM_FORECAST_TOOLS="$$(scripts/python-tools.sh)" $(CARGO) bench --locked --bench forecast
	LSTM_FORECAST_TOOLS="$$(scripts/python-tools.sh)" $(CARGO) bench --locked --bench shards
	$(CARGO) bench --locked --bench shadow
	$(CARGO) bench --locked --bench protocols
	LSTM_FORECAST_TOOLS="$$(scripts/python-tools.sh)" $(CARGO) bench --locked --bench evaluation

soak: libtorch onnxruntime ## 10 minutes at ~80% of measured capacity (SOAK_SECONDS to change); errors, and memory drift at idle checkpoints
	$(CARGO) bench --locked --bench soak

# cargo-fuzz needs the nightly toolchain. No sanitizer by default: the fuzzed code is safe Rust
# (decoding, validation, preprocessing; libtorch is not called), where AddressSanitizer finds
# nothing the borrow checker has not, and it costs 3x the executions. FUZZ_SANITIZER=address
# brings it back.
FUZZ_RUNS ?= 10000000
FUZZ_SANITIZER ?= none
fuzz: libtorch ## Fuzz request decoding and validation (cargo-fuzz, FUZZ_RUNS executions)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	LD_LIBRARY_PATH="$$(readlink -f .libtorch)/lib" cargo +nightly fuzz run --sanitizer $(FUZZ_SANITIZER) forecast_request -- -runs=$(FUZZ_RUNS) -max_len=4096

bench-peers: libtorch onnxruntime ## This server vs Python FastAPI (TorchScript, ONNX Runtime); writes BENCHMARKS.md
	scripts/bench-peers.sh

# Training needs the full PyTorch (CUDA wheels included, ~4.7 GB): kept out of run/test. Installed
# from the hash-checked lock; a changed lock rebuilds the venv.
model: libtorch onnxruntime ## Re-train the bundled model, calibrate its intervals, regenerate the test fixtures
	scripts/locked-venv.sh $(TRAIN_VENV) model_artifacts/train/requirements.txt >/dev/null
	cd model_artifacts/train && $(TRAIN_VENV)/bin/python train.py --data ../data/ETTh1.csv \
	    --out ../etth1-ot-lstm --parity ../../tests/fixtures/parity-etth1-ot-lstm.json
	# model.onnx for the ONNX Runtime engine: needs onnx and onnxruntime, which the peers' lock adds
	# to the training one.
	scripts/locked-venv.sh $(CACHE)/peers-venv bench/peers/requirements.txt >/dev/null
	$(CACHE)/peers-venv/bin/python model_artifacts/train/export_onnx.py model_artifacts/etth1-ot-lstm
	# Intervals: split conformal on the validation targets, measured with the engine that serves it.
	$(CARGO) run --locked --release -- model calibrate model_artifacts/etth1-ot-lstm \
	    --data model_artifacts/data/ETTh1.csv --targets 8640..11520 --levels 0.8,0.95 --check 11520..14400
	cd model_artifacts/train && $(TRAIN_VENV)/bin/python make_fixtures.py --out ../../tests/fixtures
	@echo "model_artifacts/etth1-ot-lstm updated; run 'make test' (the binary embeds the model)"

fmt:
	$(CARGO) fmt

clippy: libtorch
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
	rm -f $(LIBTORCH) $(ONNXRUNTIME)
