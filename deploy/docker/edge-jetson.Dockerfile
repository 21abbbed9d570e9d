# syntax=docker/dockerfile:1
# edge-agent on an NVIDIA Jetson (arm64, JetPack 6 / L4T r36). Build on the Jetson (or with
# buildx for linux/arm64) from the repository root:
#   docker build -f deploy/docker/edge-jetson.Dockerfile -t edgeflywheel/edge-agent:0.1.0-jetson \
#     --build-arg ORT_GPU_WHEEL=<URL or path of an onnxruntime-gpu wheel for this Python> .
# Run with the NVIDIA runtime so the GPU is visible:
#   docker run --runtime nvidia -v ./agent.toml:/etc/edge-agent/agent.toml:ro ... edgeflywheel/edge-agent:0.1.0-jetson
#
# Match L4T_TAG to the device's L4T release (cat /etc/nv_tegra_release).
ARG L4T_TAG=r36.4.0
FROM nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}

# onnxruntime-gpu for Jetson is not on PyPI: it comes from NVIDIA's Jetson wheels (the Jetson
# Zoo / jetson-ai-lab package index), built per JetPack and per Python version. JetPack 6's
# system Python is 3.10 and its published wheels are cp310, while edgeflywheel needs
# Python >= 3.11, so pass a cp311 aarch64 onnxruntime-gpu wheel (NVIDIA's, if one exists for
# your JetPack, or one built from source) as ORT_GPU_WHEEL. Without it the image keeps PyPI's
# CPU onnxruntime: the agent starts anyway and falls back to CPUExecutionProvider, because it
# only uses the providers from model.providers that this onnxruntime build actually has.
ARG ORT_GPU_WHEEL=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/edge-agent/venv
ENV PATH=/opt/edge-agent/venv/bin:$PATH

COPY . /tmp/src
# The base install pulls PyPI's CPU onnxruntime; the GPU wheel replaces it (both provide the
# same `onnxruntime` module, so only one may be installed).
RUN pip install /tmp/src && rm -rf /tmp/src \
 && if [ -n "$ORT_GPU_WHEEL" ]; then pip uninstall -y onnxruntime && pip install "$ORT_GPU_WHEEL"; fi \
 && python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

# Prefer TensorRT, then CUDA, then CPU; unavailable providers are skipped with a log line.
# This env var overrides model.providers from the config file.
ENV EDGE_AGENT_MODEL_PROVIDERS=TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider

RUN groupadd --system --gid 10001 edge-agent \
 && useradd --system --uid 10001 --gid edge-agent --groups video --no-create-home \
      --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent \
 && mkdir -p /var/lib/edge-agent /etc/edge-agent \
 && chown edge-agent:edge-agent /var/lib/edge-agent

VOLUME ["/var/lib/edge-agent"]
USER 10001:10001

STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-agent"]
CMD ["run", "--config", "/etc/edge-agent/agent.toml"]
