# Prometheus from Debian's package, for machines that cannot pull prom/prometheus (the
# compose stack test builds it on the local base image; make stack-test).
#   docker build -f docker/prometheus-debian.Dockerfile --build-arg DEBIAN_IMAGE=... .
# It takes the same command-line flags as prom/prometheus (see docker-compose.yml).
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Debian's prometheus and wget (the compose healthcheck), fixed by the base image's suite.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus
# nobody, as in the prom/prometheus image
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
