"""The agent's configuration: a TOML file, every key documented here, env overrides.

Each section is a dataclass; each field's `doc` metadata is its documentation, printed by
`edge-agent config template`. An environment variable EDGE_AGENT_<SECTION>_<KEY> (upper case)
overrides the file, e.g. EDGE_AGENT_CLOUD_ADDRESS=10.0.0.5:50051. Unknown sections or keys and
values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edge_agent.embedding_codec import ENCODINGS
from edge_agent.policy import PolicyConfig
from edge_agent.sources import SOURCE_TYPES

ENV_PREFIX = "EDGE_AGENT"


class ConfigError(Exception):
    """The configuration file or an override is invalid."""


def _doc(text: str, default: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class DeviceSection:
    id: str = _doc("Unique device id, as issued by `cloud-selector devices add NAME`.", "")
    token: str = _doc("Secret token issued with the id. Prefer token_file, so the secret is not in this file.", "")
    token_file: str = _doc("File holding the token (first line); used when token is empty.", "")
    state_dir: str = _doc("Directory for the outbox (spool.sqlite) and installed models (models/).", "/var/lib/edge-agent")


@dataclass
class SourceSection:
    type: str = _doc('"video" (file or directory of videos), "images" (directory of images), "camera" (USB/V4L2 '
                     'index or /dev/videoN), "stream" (rtsp:// or http(s):// URL) or "gstreamer" (a pipeline string).',
                     "video")
    path: str = _doc("File, directory, camera index/device, stream URL or GStreamer pipeline, by type.", "")
    name: str = _doc('Name of this source in candidates\' metadata ("" = derived from path).', "")
    follow: bool = _doc("video/images: keep watching the directory for new files instead of exiting at the end.", False)
    poll_interval_s: float = _doc("With follow: how often to look for new files.", 0.5)
    max_fps: float = _doc("At most this many frames per second of capture time are scored (0 = all).", 0.0)
    stride: int = _doc("Score every Nth frame of the source (1 = every frame).", 1)
    width: int = _doc("camera: requested capture width (0 = the camera's default).", 0)
    height: int = _doc("camera: requested capture height (0 = the camera's default).", 0)
    fps: float = _doc("camera: requested capture frame rate (0 = the camera's default).", 0.0)
    reconnect_initial_s: float = _doc("camera/stream: first wait before reconnecting after the stream drops.", 0.5)
    reconnect_max_s: float = _doc("camera/stream: longest wait between reconnect attempts (exponential, jittered).", 30.0)


@dataclass
class ModelSection:
    bundle_dir: str = _doc(
        "Initial model bundle (manifest.json + model.onnx + novelty bank). A newer installed bundle wins.", ""
    )
    providers: list = _doc("ONNX Runtime execution providers in order of preference, e.g. "
                           '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]; '
                           "unavailable ones are skipped with a log line and CPU is always the fallback.",
                           ["CPUExecutionProvider"])
    cuda_device_id: int = _doc("GPU index for the CUDA and TensorRT providers.", 0)
    trt_engine_cache_dir: str = _doc("TensorRT: directory to cache built engines in (\"\" = no cache; "
                                     "building an engine takes minutes on a Jetson).", "")
    trt_fp16: bool = _doc("TensorRT: allow FP16 kernels.", False)
    intra_op_threads: int = _doc("ONNX Runtime intra-op threads (0 = ORT's default).", 1)
    warmup_runs: int = _doc("Inferences on a blank frame after loading, before the first real frame.", 2)
    trusted_keys: list = _doc(
        "Public key files (PEM, from `cloud-selector keys show --out FILE`) whose Ed25519 signatures on model bundles "
        "this device accepts; list several to rotate keys (procedure in edge_agent/signing.py). Checked for updates, "
        "the installed bundle and bundle_dir at start. Empty = bundles are accepted unsigned and a WARNING says so at "
        "start: the transitional default, so deployments that predate signing keep updating.", [])
    require_signature: bool = _doc(
        "With trusted_keys set: refuse bundles without a signature (a signature that is present must always verify). "
        "Set false only while the cloud still publishes unsigned bundles. No effect when trusted_keys is empty.", True)
    max_bundle_mb: float = _doc("Refuse a model update whose files add up to more than this many MiB, before "
                                "downloading any of it (0 = no limit).", 200.0)
    health_frames: int = _doc(
        "After swapping in a model update, judge it on this many frames (the cloud's assignment may ask for another "
        "number) before reporting it healthy; 0 = report it healthy right after the swap (a device without a camera).",
        30)
    health_timeout_s: float = _doc(
        "Wait at most this long for those frames; the verdict then rests on the frames that came (none: healthy, and "
        "the report says so).", 60.0)
    max_latency_ratio: float = _doc(
        "Roll a model update back on the device when its median inference latency over those frames is above this "
        "multiple of the previous model's (any inference error rolls it back too).", 3.0)


@dataclass
class PolicySection:
    mode: str = _doc('"budget": keep the top target_fraction of frames with an adaptive threshold, paced by the '
                     'caps below; "threshold": keep frames whose combined score >= threshold.', "budget")
    target_fraction: float = _doc("budget: share of frames to keep (0..1], lowered when a cap below would "
                                  "otherwise run out early.", 0.05)
    exploration_share: float = _doc("budget: share of kept frames chosen at random (reason random), so the cloud "
                                    "also sees typical data.", 0.1)
    quantile_window: int = _doc("budget: the adaptive threshold is a quantile of this many recent scores.", 2000)
    threshold: float = _doc("threshold: keep a frame when its combined score is at least this.", 0.5)
    random_fraction: float = _doc("threshold: share of below-threshold frames kept at random (0..1).", 0.0)
    uncertainty_measure: str = _doc('"entropy", "least_confidence" or "margin".', "entropy")
    uncertainty_weight: float = _doc("Weight of the uncertainty score in the combined score.", 1.0)
    novelty_weight: float = _doc("Weight of the novelty score (0..1, calibrated on the bundle's bank).", 1.0)
    max_per_minute: int = _doc("Hard cap: frames kept per minute of capture time (0 = no cap).", 60)
    max_per_hour: int = _doc("Hard cap: frames kept per hour (0 = no cap).", 0)
    max_per_day: int = _doc("Hard cap: frames kept per 24 hours (0 = no cap).", 0)
    max_bytes_per_day: int = _doc("Hard cap: JPEG bytes kept per 24 hours (0 = no cap).", 0)
    seed: int = _doc("Seed of the random draws (exploration, tie-breaks).", 0)
    repeat_distance: float = _doc(
        "Drop a frame that would be kept when its appearance (grey thumbnail, shift-tolerant RMS distance) is "
        "closer than this to one of the last `repeat_memory` kept frames; 0 turns the appearance check off.", 0.2)
    repeat_embedding_distance: float = _doc(
        "...and its embedding is within this cosine distance of that same kept frame (checked first, it is cheap); "
        "0 = appearance alone decides.", 0.0)
    repeat_memory: int = _doc("How many recently kept frames the repeat check remembers.", 16)


@dataclass
class UploadSection:
    jpeg_quality: int = _doc("JPEG quality of uploaded frames (1-100).", 90)
    max_side: int = _doc("Downscale uploaded frames so the longer side is at most this many pixels (0 = full size).", 0)
    window: int = _doc("Candidates in flight on the upload stream before waiting for acks.", 32)
    embedding: str = _doc('How the frame\'s embedding travels: "int8" (one byte per value and a scale, a quarter '
                          'of the bytes; distances move by ~2e-4), "float32", or "none" (the cloud embeds the JPEG '
                          'when it selects; the dashboard map leaves such candidates out).', "int8")
    ack_timeout_s: float = _doc("Reconnect when candidates in flight get no ack for this long.", 60.0)


@dataclass
class CloudSection:
    address: str = _doc("host:port of `cloud-selector serve`'s gRPC endpoint.", "127.0.0.1:50051")
    tls: bool = _doc("Connect with TLS, trusting the system's CA store (or tls_ca_file). Without TLS the token "
                     "travels in clear: only for loopback or a trusted network.", False)
    tls_ca_file: str = _doc("PEM CA certificate that signed the server's certificate (setting it turns TLS on).", "")
    tls_cert_file: str = _doc("Mutual TLS: this device's PEM certificate (with tls_key_file).", "")
    tls_key_file: str = _doc("Mutual TLS: this device's PEM private key.", "")
    tls_server_name: str = _doc("Expected name in the server's certificate when it differs from the address host.", "")
    max_message_mb: float = _doc("gRPC message size limit in MiB, both directions; must cover the largest JPEG.", 8.0)
    heartbeat_interval_s: float = _doc("Seconds between heartbeats.", 5.0)
    watch_models: bool = _doc("Watch the cloud for new model bundles and hot-swap them.", True)
    release_channel: str = _doc('Release channel or device group for model assignments ("" = default).', "")


@dataclass
class SpoolSection:
    synchronous: str = _doc('SQLite durability: "FULL" survives power loss, "NORMAL" only crashes.', "FULL")
    cap_mb: float = _doc("Disk cap of the outbox in MiB; when full, the lowest-value queued frames are evicted "
                         "first (0 = no cap).", 1024.0)


@dataclass
class MetricsSection:
    port: int = _doc("Serve Prometheus metrics on http://<address>:<port>/metrics (0 = off).", 0)
    address: str = _doc('Address the metrics endpoint binds; "0.0.0.0" exposes it to the network.', "127.0.0.1")


@dataclass
class LogSection:
    level: str = _doc('"DEBUG", "INFO", "WARNING" or "ERROR" (the --log-level option wins).', "INFO")
    format: str = _doc('"text" or "json" (one JSON object per line, for log shippers).', "text")


@dataclass
class AgentConfig:
    device: DeviceSection = field(default_factory=DeviceSection)
    source: SourceSection = field(default_factory=SourceSection)
    model: ModelSection = field(default_factory=ModelSection)
    policy: PolicySection = field(default_factory=PolicySection)
    upload: UploadSection = field(default_factory=UploadSection)
    cloud: CloudSection = field(default_factory=CloudSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)

    def validate(self) -> None:
        required = {"device.id": self.device.id, "source.path": self.source.path, "model.bundle_dir": self.model.bundle_dir}
        for key, value in required.items():
            if not value:
                raise ConfigError(f"{key} is required")
        if self.source.type not in SOURCE_TYPES:
            raise ConfigError(f"source.type must be one of {', '.join(SOURCE_TYPES)}; got {self.source.type!r}")
        if self.source.stride < 1 or self.source.max_fps < 0:
            raise ConfigError("source.stride must be >= 1 and source.max_fps >= 0")
        if not 1 <= self.upload.jpeg_quality <= 100:
            raise ConfigError("upload.jpeg_quality must be within 1..100")
        if self.upload.max_side < 0 or self.upload.window < 1 or self.upload.ack_timeout_s <= 0:
            raise ConfigError("upload.max_side must be >= 0, upload.window >= 1 and upload.ack_timeout_s > 0")
        if self.upload.embedding not in ENCODINGS:
            raise ConfigError(f"upload.embedding must be one of {', '.join(ENCODINGS)}; got {self.upload.embedding!r}")
        if self.cloud.max_message_mb <= 0 or self.cloud.heartbeat_interval_s <= 0:
            raise ConfigError("cloud.max_message_mb and cloud.heartbeat_interval_s must be > 0")
        if bool(self.cloud.tls_cert_file) != bool(self.cloud.tls_key_file):
            raise ConfigError("cloud.tls_cert_file and cloud.tls_key_file go together (mutual TLS)")
        if self.spool.synchronous.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(f'spool.synchronous must be "FULL" or "NORMAL", got {self.spool.synchronous!r}')
        if self.spool.cap_mb < 0:
            raise ConfigError("spool.cap_mb must be >= 0 (0 = no cap)")
        if self.policy.repeat_distance < 0 or self.policy.repeat_embedding_distance < 0 or self.policy.repeat_memory < 1:
            raise ConfigError("policy.repeat_distance and repeat_embedding_distance must be >= 0, repeat_memory >= 1")
        if not 0 <= self.metrics.port <= 65535:
            raise ConfigError("metrics.port must be within 0..65535")
        if self.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log.level must be DEBUG, INFO, WARNING or ERROR; got {self.log.level!r}")
        if self.log.format not in ("text", "json"):
            raise ConfigError(f'log.format must be "text" or "json"; got {self.log.format!r}')
        if self.model.warmup_runs < 0 or self.model.intra_op_threads < 0:
            raise ConfigError("model.warmup_runs and model.intra_op_threads must be >= 0")
        if self.model.max_bundle_mb < 0:
            raise ConfigError("model.max_bundle_mb must be >= 0 (0 = no limit)")
        if self.model.health_frames < 0 or self.model.health_timeout_s <= 0:
            raise ConfigError("model.health_frames must be >= 0 (0 = no health check) and model.health_timeout_s > 0")
        if self.model.max_latency_ratio < 1.0:
            raise ConfigError(f"model.max_latency_ratio must be >= 1.0 (a new model may be as fast as the old one); "
                              f"got {self.model.max_latency_ratio}")
        if any(not isinstance(path, str) or not path for path in self.model.trusted_keys):
            raise ConfigError("model.trusted_keys must be a list of public key file paths")
        unknown = [name for name in self.model.providers if name not in ort.get_all_providers()]
        if unknown:
            raise ConfigError(f"model.providers: unknown execution provider(s) {unknown}; ONNX Runtime knows "
                              f"{', '.join(ort.get_all_providers())}")
        try:
            self.policy_config()
        except ValueError as exc:
            raise ConfigError(f"policy: {exc}") from exc

    def policy_config(self) -> PolicyConfig:
        """The [policy] keys that the keep policy takes (the repeat_* keys configure the
        repeat check)."""
        keys = {k: v for k, v in vars(self.policy).items() if not k.startswith("repeat_")}
        return PolicyConfig(**keys)


def _coerce(key: str, value: Any, default: Any, *, from_env: bool = False) -> Any:
    """Check a TOML value (or, with from_env, a string to parse) against the default's type."""
    expected = type(default)
    if from_env and expected is not str:
        try:
            value = tomllib.loads(f"v = {value}")["v"] if expected is not list else [v.strip() for v in value.split(",") if v.strip()]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{key}: cannot parse {value!r} as {expected.__name__}") from exc
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} ({value!r})")
    return value


def build_config(data: Mapping[str, Any], env: Mapping[str, str]) -> AgentConfig:
    config = AgentConfig()
    sections = {f.name: f for f in dataclasses.fields(AgentConfig)}
    for section_name, values in data.items():
        if section_name not in sections:
            raise ConfigError(f"unknown section [{section_name}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] must be a table")
        section = getattr(config, section_name)
        known = {f.name for f in dataclasses.fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown key {section_name}.{key}; known: {', '.join(sorted(known))}")
            setattr(section, key, _coerce(f"{section_name}.{key}", value, getattr(section, key)))
    for section_name in sections:
        section = getattr(config, section_name)
        for f in dataclasses.fields(section):
            env_key = f"{ENV_PREFIX}_{section_name}_{f.name}".upper()
            if env_key in env:
                setattr(section, f.name, _coerce(env_key, env[env_key], getattr(section, f.name), from_env=True))
    config.validate()
    return config


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return build_config(data, os.environ if env is None else env)


def template() -> str:
    """A documented TOML file with every key at its default."""
    lines = ["# edge-agent configuration. Every key is optional unless marked required.",
             f"# Override any key with {ENV_PREFIX}_<SECTION>_<KEY>, e.g. {ENV_PREFIX}_CLOUD_ADDRESS.", ""]
    required = {"device.id", "source.path", "model.bundle_dir"}
    for section_field in dataclasses.fields(AgentConfig):
        lines.append(f"[{section_field.name}]")
        section = section_field.default_factory()
        for f in dataclasses.fields(section):
            mark = " (required)" if f"{section_field.name}.{f.name}" in required else ""
            lines.append(f"# {f.metadata['doc']}{mark}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)


def reference_markdown() -> str:
    """Every key as a Markdown table (section, key, default, meaning): the README's reference."""
    required = {"device.id", "source.path", "model.bundle_dir"}
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section_field in dataclasses.fields(AgentConfig):
        section = section_field.default_factory()
        for f in dataclasses.fields(section):
            key = f"{section_field.name}.{f.name}"
            default = "*(required)*" if key in required else f"`{_toml_value(getattr(section, f.name))}`"
            doc = f.metadata["doc"].replace("|", "\\|")
            lines.append(f"| `{key}` | {default} | {doc} |")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
