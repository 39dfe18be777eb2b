# syntax=docker/dockerfile:1
# sidecar in a container: docs/container.md.
#   docker build -t sidecar .
#   docker run -v sidecar-sock:/run/sidecar -v $PWD/my.yaml:/etc/sidecar/sidecar.yaml:ro sidecar

# ---- stage 1: wheels for the project (compiled) and every dependency -------
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# A C compiler for the compiled (mypyc) wheel of the per-call path; it stays in this
# stage. Debian's current security release of each, not a pinned old one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md constraints.txt setup.py ./
COPY scripts/build_backend.py ./scripts/
COPY sidecar ./sidecar
# With the otlp extra, so telemetry.tracing.otlp_endpoint works in the image. Every
# dependency at the version constraints.txt pins (scripts/lock.py writes it), so two
# builds of one commit get the same libraries.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt '.[otlp]' \
 && cp constraints.txt /wheels/

# ---- stage 2: the runtime: installed wheels, no build tools, no sources -----
# (the wheels are bind-mounted, so they never land in a layer: needs BuildKit)
FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="A local daemon that makes an application's outbound gRPC, HTTP and Kafka calls for it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/container.md"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    SIDECAR_CONFIG=/etc/sidecar/sidecar.yaml
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels \
        -c /wheels/constraints.txt 'sidecar[otlp]' \
 && groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
 && install -d -o sidecar -g sidecar -m 0750 /run/sidecar
COPY config/sidecar.yaml /etc/sidecar/sidecar.yaml
# The API's .proto files, to generate clients in other languages (docs/connecting.md):
# /usr/share/sidecar/protos/sidecar/v1/sidecar.proto. The package has the same file
# beside its generated Python code (sidecar/v1/sidecar.proto in site-packages).
COPY protos /usr/share/sidecar/protos

# Numeric, so Kubernetes' runAsNonRoot can check it without a runAsUser (the ids of
# the sidecar user and group made above).
USER 10001:10001
# The sockets: share this volume with the application's container.
VOLUME ["/run/sidecar"]
# Admin endpoint (/healthz, /readyz, /status); the default config binds it to
# 127.0.0.1, so publish it only with a config that says admin.address 0.0.0.0:9901.
EXPOSE 9901

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sidecar", "health", "--socket", "/run/sidecar/app.sock"]
# SIGTERM drains in-flight calls for drain_timeout, then flushes Kafka:
# give `docker stop -t` more than 2 x drain_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.yaml"]
