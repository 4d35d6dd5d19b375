# syntax=docker/dockerfile:1
# nnserve serving image (NVIDIA GPU): CUDA 13 + cuDNN runtime, onnxruntime-gpu, no torch.
# ONNX Runtime asks for CUDAExecutionProvider first; NNSERVE_DEVICE_POLICY decides
# whether a model may fall back to CPU. Needs the NVIDIA Container Toolkit on the host:
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The distribution's python3, fixed by the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# Versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[gpu]"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The distribution's python3, fixed by the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NNSERVE_HOST=0.0.0.0 \
    NNSERVE_REPOSITORY=/models \
    NNSERVE_DEVICE_POLICY=allow_cpu_fallback
RUN groupadd --system --gid 10001 nnserve \
    && useradd --system --uid 10001 --gid nnserve --home-dir /app --shell /usr/sbin/nologin nnserve \
    && mkdir -p /app /models \
    && chown nnserve:nnserve /app /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 50051 50052 9091 9092
ENTRYPOINT ["python", "-m", "services"]
CMD ["--service", "classify"]
