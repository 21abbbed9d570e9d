# syntax=docker/dockerfile:1
# edge-agent on an NVIDIA Jetson (arm64, JetPack 6 = L4T r36, Ubuntu 22.04). Read docs/jetson.md
# first: NOT BUILT OR RUN ON A JETSON YET, and the Python version has consequences.
#
# Build on the Jetson (or with buildx for linux/arm64) from the repository root:
#   docker build -f deploy/docker/edge-jetson.Dockerfile -t edgeflywheel/edge-agent:0.1.0-jetson \
#     --build-arg ORT_GPU_INDEX_URL=<pip index with an aarch64 onnxruntime-gpu wheel for cp311> .
# Run with the NVIDIA runtime so the GPU is visible; a CSI camera also needs the Argus socket:
#   docker run -d --runtime nvidia --name edge-agent \
#     -v ./agent.toml:/etc/edge-agent/agent.toml:ro -v ./bundle:/models/initial:ro \
#     -v edge-state:/var/lib/edge-agent \
#     [--device /dev/video0]  [-v /tmp/argus_socket:/tmp/argus_socket] \
#     edgeflywheel/edge-agent:0.1.0-jetson
#
# Python: edgeflywheel needs Python >= 3.11 (the config loader uses tomllib); JetPack 6's system
# Python is 3.10. This image installs Ubuntu 22.04's python3.11 package, which has three
# consequences (docs/jetson.md, "Python 3.11 on JetPack 6"):
#   1. onnxruntime-gpu: NVIDIA's Jetson wheels for JetPack 6 are built for cp310. Pass an index
#      or a wheel that has a cp311 aarch64 build (ORT_GPU_INDEX_URL or ORT_GPU_WHEEL); with
#      neither, the image keeps PyPI's CPU onnxruntime and the agent runs on the CPU.
#   2. OpenCV with GStreamer (needed for source.type = "gstreamer", i.e. CSI cameras through
#      nvarguscamerasrc): Ubuntu's python3-opencv has it but is built for Python 3.10 only, so
#      it cannot be imported here. The image uses PyPI's opencv-python-headless (V4L2 USB
#      cameras, RTSP and files work; GStreamer does not) unless OPENCV_WHEEL names a cp311
#      OpenCV wheel built with -D WITH_GSTREAMER=ON.
#   3. Everything else (grpcio, numpy, protobuf, cryptography) has cp311 aarch64 wheels on PyPI.
#
# Match L4T_TAG to the device's L4T release (`cat /etc/nv_tegra_release`; r36.x = JetPack 6).
ARG L4T_TAG=r36.4.0
FROM nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}

# A pip index serving onnxruntime-gpu for this JetPack, CUDA and Python 3.11 (NVIDIA's Jetson
# AI Lab index is organised per JetPack/CUDA, e.g. .../jp6/cu126; check it has cp311 wheels).
ARG ORT_GPU_INDEX_URL=""
# Or one wheel file URL/path (takes precedence over the index).
ARG ORT_GPU_WHEEL=""
# Optional: a cp311 aarch64 OpenCV wheel built with GStreamer, replacing opencv-python-headless.
ARG OPENCV_WHEEL=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# python3.11 comes from Ubuntu 22.04's universe (jammy-updates); the deadsnakes PPA is the
# alternative if your mirror lacks it. The GStreamer runtime is for an OPENCV_WHEEL built with
# GStreamer and for trying pipelines with gst-launch-1.0; nvarguscamerasrc itself comes with
# L4T's multimedia packages.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv \
      gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 edge-agent \
 && useradd --system --uid 10001 --gid edge-agent --groups video --no-create-home \
      --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent \
 && mkdir -p /var/lib/edge-agent /etc/edge-agent \
 && chown edge-agent:edge-agent /var/lib/edge-agent

RUN python3.11 -m venv /opt/edge-agent/venv
ENV PATH=/opt/edge-agent/venv/bin:$PATH

COPY . /tmp/src
# The base install pulls PyPI's CPU onnxruntime and headless OpenCV; the GPU/GStreamer builds
# replace them (each pair provides the same module, so only one of each may be installed).
# --no-deps: their dependencies are those of the CPU builds, already installed from PyPI (a
# Jetson index need not mirror PyPI); `pip check` catches a replacement that wants more.
# When a GPU build was asked for, the build fails unless CUDA is among the providers, so a
# mis-built image never ships that would silently run on the CPU.
RUN pip install /tmp/src && rm -rf /tmp/src \
 && if [ -n "$ORT_GPU_WHEEL" ]; then \
      pip uninstall -y onnxruntime && pip install --no-deps "$ORT_GPU_WHEEL"; \
    elif [ -n "$ORT_GPU_INDEX_URL" ]; then \
      pip uninstall -y onnxruntime && pip install --no-deps --index-url "$ORT_GPU_INDEX_URL" onnxruntime-gpu; \
    else \
      echo "NOTE: no ORT_GPU_INDEX_URL/ORT_GPU_WHEEL given: this image runs models on the CPU"; \
    fi \
 && if [ -n "$OPENCV_WHEEL" ]; then \
      pip uninstall -y opencv-python-headless && pip install --no-deps "$OPENCV_WHEEL"; \
    fi \
 && pip check

# Show what the image can do, and refuse images that would not do what the build asked for.
RUN python - <<'EOF'
import os
import onnxruntime as ort
from edge_agent.sources import has_gstreamer
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers, "| OpenCV GStreamer:", has_gstreamer())
if (os.environ.get("ORT_GPU_WHEEL") or os.environ.get("ORT_GPU_INDEX_URL")) and "CUDAExecutionProvider" not in providers:
    raise SystemExit("the onnxruntime installed from ORT_GPU_* has no CUDAExecutionProvider")
if os.environ.get("OPENCV_WHEEL") and not has_gstreamer():
    raise SystemExit("OPENCV_WHEEL was given but that OpenCV has no GStreamer support")
EOF

# Prefer TensorRT, then CUDA, then CPU (unavailable providers are skipped with a log line);
# TensorRT engines are cached in the state volume so only the first start builds them. These
# variables override the same keys in agent.toml ([model] providers, trt_engine_cache_dir).
ENV EDGE_AGENT_MODEL_PROVIDERS=TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider \
    EDGE_AGENT_MODEL_TRT_ENGINE_CACHE_DIR=/var/lib/edge-agent/trt-cache \
    EDGE_AGENT_METRICS_PORT=9464

VOLUME ["/var/lib/edge-agent"]
USER 10001:10001

# Healthy = the agent's metrics endpoint answers /healthz on the container's loopback. The
# long start period covers building TensorRT engines on the first start (minutes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_AGENT_METRICS_PORT', '9464'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-agent"]
CMD ["run", "--config", "/etc/edge-agent/agent.toml"]
