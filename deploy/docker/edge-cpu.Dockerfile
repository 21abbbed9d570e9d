# syntax=docker/dockerfile:1
# edge-agent on any CPU (x86_64 or arm64): the package's base dependencies only (ONNX Runtime
# CPU, headless OpenCV, gRPC, numpy), no torch, no cloud extra.
# Build from the repository root:
#   docker build -f deploy/docker/edge-cpu.Dockerfile -t edgeflywheel/edge-agent:0.1.0-cpu .
# Run (config, initial model bundle and videos mounted read-only; state in a volume; a USB
# camera passed with --device and the container's video group):
#   docker run -d --name edge-agent --read-only --tmpfs /tmp \
#     -v ./agent.toml:/etc/edge-agent/agent.toml:ro -v ./bundle:/models/initial:ro \
#     -v ./videos:/videos:ro -v edge-state:/var/lib/edge-agent \
#     [--device /dev/video0 --group-add video] \
#     edgeflywheel/edge-agent:0.1.0-cpu
# Diagnose a setup before (or instead of) running it:
#   docker run --rm ...same mounts... edgeflywheel/edge-agent:0.1.0-cpu doctor --config /etc/edge-agent/agent.toml
# Stop with `docker stop -t 60 edge-agent` so the outbox is closed cleanly (docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The user first: it never changes, so this layer stays cached across code changes.
# Group video (gid 44 in Debian) lets the agent open /dev/video* passed with --device.
RUN groupadd --system --gid 10001 edge-agent \
 && useradd --system --uid 10001 --gid edge-agent --groups video --no-create-home \
      --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent \
 && mkdir -p /var/lib/edge-agent /etc/edge-agent \
 && chown edge-agent:edge-agent /var/lib/edge-agent

# The base install only: no `[cloud]` extra, so no torch/faiss/sqlalchemy. pip byte-compiles
# at install time, so the agent starts fast on a read-only root file system.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src \
 && python -c "import edge_agent.cli, onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

# The metrics endpoint (GET /metrics, GET /healthz) on the container's own loopback: the
# HEALTHCHECK below reaches it, nothing outside the container does. To scrape it from the
# host, bind it to all of the container's interfaces (-e EDGE_AGENT_METRICS_ADDRESS=0.0.0.0)
# and publish it on the host's loopback only (-p 127.0.0.1:9464:9464). Any key of agent.toml
# can be overridden this way (EDGE_AGENT_<SECTION>_<KEY>); metrics.port = 0 turns it off, and
# the HEALTHCHECK with it.
ENV EDGE_AGENT_METRICS_PORT=9464

# The outbox (spool.sqlite) and installed models/: keep them across container restarts.
VOLUME ["/var/lib/edge-agent"]
USER 10001:10001

# Healthy = the agent's HTTP endpoint answers /healthz. Cheap on purpose: `edge-agent doctor`
# loads the model and calls the cloud, too heavy to repeat every 30 s; run it by hand instead.
# The start period covers loading the model (and, on accelerators, building engines).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_AGENT_METRICS_PORT', '9464'), timeout=4)"]

# SIGTERM (docker stop) stops the agent cleanly; unsent frames stay in the outbox volume.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-agent"]
CMD ["run", "--config", "/etc/edge-agent/agent.toml"]
