# syntax=docker/dockerfile:1
# InferenceHub worker, CUDA build (candle's `cuda` feature). Build from the repository
# root after `make models`; CUDA_COMPUTE_CAP selects the GPU generation the kernels are
# compiled for (86: A10G / g5, 89: L4 / g6, 90: H100 / p5):
#   docker build -f infra/worker-cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=86 -t inferencehub-worker:cuda .
FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build
ARG CUDA_COMPUTE_CAP=86
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    PATH=/root/.cargo/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY gpu-worker gpu-worker
COPY functions functions
# The workspace lists tools/ too (nothing of it is built into the image).
COPY tools tools
RUN cargo build --release --locked -p inferencehub-worker --bin inferencehub-worker --features cuda

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin inferencehub
COPY --from=build /src/target/release/inferencehub-worker /usr/local/bin/inferencehub-worker
COPY --chown=10001:10001 models /models
USER 10001
ENV IHUB_WORKER_LISTEN=0.0.0.0:50051 \
    IHUB_WORKER_METRICS_LISTEN=0.0.0.0:9464 \
    IHUB_WORKER_MODEL_DIR=/models \
    IHUB_WORKER_DEVICE=cuda \
    IHUB_WORKER_LOG_FORMAT=json
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["inferencehub-worker", "probe", "--addr", "127.0.0.1:9464"]
ENTRYPOINT ["inferencehub-worker"]
CMD ["serve"]
