# syntax=docker/dockerfile:1
# cloud-selector: gRPC ingest, selection, labels, training, model registry.
# Build from the repository root (the context must hold pyproject.toml and the packages):
#   docker build -f deploy/docker/cloud.Dockerfile -t edgeflywheel/cloud-selector:0.1.0 .
# Run:
#   docker run -p 50051:50051 -v cloud-data:/data edgeflywheel/cloud-selector:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU index: a bare `torch` from PyPI is a multi-GB CUDA build. The
# `.[cloud]` install below then finds torch>=2.3 already satisfied and leaves it alone.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY . /tmp/src
RUN pip install "/tmp/src[cloud]" && rm -rf /tmp/src

RUN groupadd --system --gid 10001 cloud \
 && useradd --system --uid 10001 --gid cloud --create-home --home-dir /home/cloud --shell /usr/sbin/nologin cloud \
 && mkdir /data && chown cloud:cloud /data

# Embedded default: all state (catalog.sqlite, blobs/, cache/) in the data directory. Set
# CLOUD_SELECTOR_CATALOG (PostgreSQL URL) and CLOUD_SELECTOR_BLOB_STORE (s3://bucket/prefix,
# with CLOUD_SELECTOR_S3_*) to run stateless replicas; then /data holds only a bundle cache.
ENV CLOUD_SELECTOR_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# gRPC for devices (ingest, model watch/fetch, heartbeats); HTTP health for probes.
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3)"]

ENTRYPOINT ["cloud-selector"]
CMD ["serve", "--grpc-address", "0.0.0.0:50051", "--health-address", "0.0.0.0:8080"]
