# syntax=docker/dockerfile:1
# nnserve trainer image: trains missing checkpoints on CPU, exports them to ONNX with the
# parity gate, and writes the model repository (a volume mounted at /models).
#   docker build -f docker/trainer.Dockerfile -t nnserve/trainer .
#   docker run -v model_repository:/models nnserve/trainer
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must match the torch pin of the `train` extra in pyproject.toml.
ARG TORCH_VERSION=2.13.0

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# CPU-only torch wheel first (no CUDA libraries), so that the `train` extra below
# finds torch==${TORCH_VERSION} already satisfied.
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
# Versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[cpu,train]"
RUN groupadd --system --gid 10001 nnserve \
    && useradd --system --uid 10001 --gid nnserve --home-dir /app --shell /usr/sbin/nologin nnserve \
    && mkdir -p /app /models \
    && chown nnserve:nnserve /app /models
WORKDIR /app
USER 10001:10001
# An empty named volume mounted at /models takes this directory's owner (nnserve)
# on first use, so the non-root trainer can write the repository.
CMD ["python", "-m", "export", "--model", "all", "--if-missing", "--repository", "/models"]
