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

from edge_agent.policy import PolicyConfig

ENV_PREFIX = "EDGE_AGENT"


class ConfigError(Exception):
    """The configuration file or an override is invalid."""


def _doc(text: str, default: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class DeviceSection:
    id: str = _doc("Unique device id, sent with every candidate and heartbeat.", "")
    state_dir: str = _doc("Directory for the outbox (spool.sqlite) and installed models (models/).", "/var/lib/edge-agent")


@dataclass
class SourceSection:
    type: str = _doc('"video" (a video file or a directory of them) or "images" (a directory of images).', "video")
    path: str = _doc("File or directory to read frames from.", "")
    follow: bool = _doc("Keep watching the directory for new video files instead of exiting at the end.", False)
    poll_interval_s: float = _doc("With follow: how often to look for new files.", 0.5)


@dataclass
class ModelSection:
    bundle_dir: str = _doc(
        "Initial model bundle (manifest.json + model.onnx + novelty bank). A newer installed bundle wins.", ""
    )
    providers: list = _doc("ONNX Runtime execution providers in order of preference; CPU is always the fallback.",
                           ["CPUExecutionProvider"])
    intra_op_threads: int = _doc("ONNX Runtime intra-op threads (0 = ORT's default).", 1)


@dataclass
class PolicySection:
    threshold: float = _doc("Keep a frame when its combined score is at least this.", 0.5)
    uncertainty_measure: str = _doc('"entropy", "least_confidence" or "margin".', "entropy")
    uncertainty_weight: float = _doc("Weight of the uncertainty score in the combined score.", 1.0)
    novelty_weight: float = _doc("Weight of the novelty score (cosine distance to the bank) in the combined score.", 1.0)
    max_per_minute: int = _doc("At most this many frames kept per minute of capture time.", 60)
    random_fraction: float = _doc("Share of below-threshold frames kept at random as exploration (0..1).", 0.0)
    seed: int = _doc("Seed of the exploration draw.", 0)
    repeat_distance: float = _doc(
        "Drop a frame that would be kept when its appearance (grey thumbnail, shift-tolerant RMS distance) is "
        "closer than this to one of the last `repeat_memory` kept frames; 0 turns the check off.", 0.2)
    repeat_memory: int = _doc("How many recently kept frames the repeat check remembers.", 16)


@dataclass
class UploadSection:
    jpeg_quality: int = _doc("JPEG quality of uploaded frames (1-100).", 90)
    window: int = _doc("Candidates in flight on the upload stream before waiting for acks.", 32)


@dataclass
class CloudSection:
    address: str = _doc("host:port of `cloud-selector serve`'s gRPC endpoint.", "127.0.0.1:50051")
    max_message_mb: float = _doc("gRPC message size limit in MiB, both directions; must cover the largest JPEG.", 8.0)
    heartbeat_interval_s: float = _doc("Seconds between heartbeats.", 5.0)
    watch_models: bool = _doc("Watch the cloud for new model bundles and hot-swap them.", True)
    release_channel: str = _doc('Release channel or device group for model assignments ("" = default).', "")


@dataclass
class SpoolSection:
    synchronous: str = _doc('SQLite durability: "FULL" survives power loss, "NORMAL" only crashes.', "FULL")


@dataclass
class AgentConfig:
    device: DeviceSection = field(default_factory=DeviceSection)
    source: SourceSection = field(default_factory=SourceSection)
    model: ModelSection = field(default_factory=ModelSection)
    policy: PolicySection = field(default_factory=PolicySection)
    upload: UploadSection = field(default_factory=UploadSection)
    cloud: CloudSection = field(default_factory=CloudSection)
    spool: SpoolSection = field(default_factory=SpoolSection)

    def validate(self) -> None:
        required = {"device.id": self.device.id, "source.path": self.source.path, "model.bundle_dir": self.model.bundle_dir}
        for key, value in required.items():
            if not value:
                raise ConfigError(f"{key} is required")
        if self.source.type not in ("video", "images"):
            raise ConfigError(f'source.type must be "video" or "images", got {self.source.type!r}')
        if not 1 <= self.upload.jpeg_quality <= 100:
            raise ConfigError("upload.jpeg_quality must be within 1..100")
        if self.cloud.max_message_mb <= 0 or self.cloud.heartbeat_interval_s <= 0:
            raise ConfigError("cloud.max_message_mb and cloud.heartbeat_interval_s must be > 0")
        if self.spool.synchronous.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(f'spool.synchronous must be "FULL" or "NORMAL", got {self.spool.synchronous!r}')
        if self.policy.repeat_distance < 0 or self.policy.repeat_memory < 1:
            raise ConfigError("policy.repeat_distance must be >= 0 and policy.repeat_memory >= 1")
        try:
            self.policy_config()
        except ValueError as exc:
            raise ConfigError(f"policy: {exc}") from exc

    def policy_config(self) -> PolicyConfig:
        """The [policy] keys that the threshold policy takes (the repeat_* keys configure the
        appearance check)."""
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


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
