# syntax=docker/dockerfile:1
# nnserve serving image (CPU): the base dependencies plus onnxruntime, no torch.
#   docker build -f docker/serving.Dockerfile -t nnserve/serving .
#   docker run nnserve/serving --service classify    (or --service sequence)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# Versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[cpu]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NNSERVE_HOST=0.0.0.0 \
    NNSERVE_REPOSITORY=/models \
    NNSERVE_DEVICE_POLICY=cpu_only
RUN groupadd --system --gid 10001 nnserve \
    && useradd --system --uid 10001 --gid nnserve --home-dir /app --shell /usr/sbin/nologin nnserve \
    && mkdir -p /app /models \
    && chown nnserve:nnserve /app /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# gRPC: classify 50051, sequence 50052. Prometheus /metrics: classify 9091, sequence 9092.
EXPOSE 50051 50052 9091 9092
# The gRPC port differs per service, so the health check lives in docker-compose.yml:
#   python -m nnserve_client --address 127.0.0.1:<grpc port> health
ENTRYPOINT ["python", "-m", "services"]
CMD ["--service", "classify"]
