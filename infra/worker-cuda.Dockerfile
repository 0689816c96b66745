# syntax=docker/dockerfile:1
# InferenceHub worker, CUDA build (candle's `cuda` feature), made the way `make worker-cuda`
# makes it on a machine without a GPU: the CUDA 13.0.x toolkit from NVIDIA's PyPI wheels
# (pinned in scripts/cuda-toolkit.sh), a libcuda link stub, kernels compiled as PTX for
# CUDA_COMPUTE_CAP (90: H100/H200 / p5; 89: L4 / g6; 86: A10G / g5). Hosts need an NVIDIA
# driver of the 580 series (CUDA 13.0) or newer. Build from the repository root after
# `make models`:
#   docker build -f infra/worker-cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t inferencehub-worker:cuda .
FROM rust:1.95-bookworm AS build
ARG CUDA_COMPUTE_CAP=90
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip make xz-utils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml Makefile ./
COPY proto proto
COPY gpu-worker gpu-worker
COPY functions functions
# The workspace lists tools/ too (nothing of it is built into the image).
COPY tools tools
COPY scripts scripts
RUN make worker-cuda CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CUDA_TARGET=/src/target/cuda

# ONNX Runtime with its CUDA execution provider (the worker's ONNX engine on the GPU), from
# the pinned onnxruntime-gpu wheel (built for CUDA 13 and cuDNN 9).
FROM python:3.11-slim-bookworm AS onnxruntime
COPY tools/python/fetch_onnxruntime.py /fetch_onnxruntime.py
RUN python /fetch_onnxruntime.py onnxruntime-gpu 1.31.1 /onnxruntime

# The runtime libraries of the same CUDA release: libcudart 13, libcublas 13, libcurand 10,
# libcufft, and cuDNN 9 (ONNX Runtime's CUDA execution provider).
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin inferencehub
COPY --from=build /src/target/cuda/release/inferencehub-worker /usr/local/bin/inferencehub-worker
COPY --from=onnxruntime /onnxruntime /usr/local/lib/onnxruntime
# The runtime user reads the models and cannot change them.
COPY --chown=root:root --chmod=0555 models /models
USER 10001
# /metrics and /healthz are plaintext: on loopback unless the deployment opens them to
# its load balancer only (infra/worker-stack.yaml sets 0.0.0.0 behind a security group).
ENV IHUB_WORKER_LISTEN=0.0.0.0:50051 \
    IHUB_WORKER_METRICS_LISTEN=127.0.0.1:9464 \
    IHUB_WORKER_MODEL_DIR=/models \
    IHUB_WORKER_DEVICE=cuda \
    IHUB_WORKER_ONNXRUNTIME=/usr/local/lib/onnxruntime/libonnxruntime.so.1.31.1 \
    IHUB_WORKER_LOG_FORMAT=json
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["inferencehub-worker", "probe", "--addr", "127.0.0.1:9464"]
ENTRYPOINT ["inferencehub-worker"]
CMD ["serve"]
