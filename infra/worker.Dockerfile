# syntax=docker/dockerfile:1
# InferenceHub worker, CPU build. Build from the repository root after `make models`
# (the image carries models/; mount another folder at /models to serve your own):
#   docker build -f infra/worker.Dockerfile -t inferencehub-worker:cpu .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY gpu-worker gpu-worker
COPY functions functions
# The workspace lists tools/ too (nothing of it is built into the image).
COPY tools tools
RUN cargo build --release --locked -p inferencehub-worker --bin inferencehub-worker

# ONNX Runtime's shared library (the worker's ONNX engine), from the pinned PyPI wheel.
FROM python:3.11-slim-bookworm AS onnxruntime
COPY tools/python/fetch_onnxruntime.py /fetch_onnxruntime.py
RUN python /fetch_onnxruntime.py onnxruntime 1.31.1 /onnxruntime

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin inferencehub
COPY --from=build /src/target/release/inferencehub-worker /usr/local/bin/inferencehub-worker
COPY --from=onnxruntime /onnxruntime /usr/local/lib/onnxruntime
# The runtime user reads the models and cannot change them.
COPY --chown=root:root --chmod=0555 models /models
USER 10001
# /metrics and /healthz are plaintext: on loopback unless the deployment opens them to
# its load balancer only (infra/worker-stack.yaml sets 0.0.0.0 behind a security group).
ENV IHUB_WORKER_LISTEN=0.0.0.0:50051 \
    IHUB_WORKER_METRICS_LISTEN=127.0.0.1:9464 \
    IHUB_WORKER_MODEL_DIR=/models \
    IHUB_WORKER_DEVICE=cpu \
    IHUB_WORKER_ONNXRUNTIME=/usr/local/lib/onnxruntime/libonnxruntime.so.1.31.1 \
    IHUB_WORKER_LOG_FORMAT=json
EXPOSE 50051
# The probe reads /healthz on the metrics port, which mirrors grpc.health.v1 (the gRPC
# port itself only answers clients holding a certificate from the client CA).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["inferencehub-worker", "probe", "--addr", "127.0.0.1:9464"]
ENTRYPOINT ["inferencehub-worker"]
CMD ["serve"]
