# syntax=docker/dockerfile:1
# edge-agent on any CPU (x86_64 or arm64): the package's base dependencies only, no torch.
# Build from the repository root:
#   docker build -f deploy/docker/edge-cpu.Dockerfile -t edgeflywheel/edge-agent:0.1.0-cpu .
# Run (config, initial model bundle and videos mounted; state in a volume):
#   docker run -v ./agent.toml:/etc/edge-agent/agent.toml:ro -v ./bundle:/models/initial:ro \
#     -v ./videos:/videos:ro -v edge-state:/var/lib/edge-agent edgeflywheel/edge-agent:0.1.0-cpu
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

RUN groupadd --system --gid 10001 edge-agent \
 && useradd --system --uid 10001 --gid edge-agent --no-create-home --home-dir /var/lib/edge-agent \
      --shell /usr/sbin/nologin edge-agent \
 && mkdir -p /var/lib/edge-agent /etc/edge-agent \
 && chown edge-agent:edge-agent /var/lib/edge-agent

# The outbox (spool.sqlite) and installed models/: keep them across container restarts.
VOLUME ["/var/lib/edge-agent"]
USER 10001:10001

# SIGTERM (docker stop) stops the agent cleanly; give it `docker stop -t 45` to drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-agent"]
CMD ["run", "--config", "/etc/edge-agent/agent.toml"]
