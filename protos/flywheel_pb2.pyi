from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeepReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEEP_REASON_UNSPECIFIED: _ClassVar[KeepReason]
    KEEP_REASON_UNCERTAINTY: _ClassVar[KeepReason]
    KEEP_REASON_NOVELTY: _ClassVar[KeepReason]
    KEEP_REASON_RANDOM: _ClassVar[KeepReason]
    KEEP_REASON_MANUAL: _ClassVar[KeepReason]

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATUS_UNSPECIFIED: _ClassVar[AckStatus]
    ACK_STATUS_STORED: _ClassVar[AckStatus]
    ACK_STATUS_ALREADY_STORED: _ClassVar[AckStatus]
    ACK_STATUS_REJECTED: _ClassVar[AckStatus]

class InstallStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTALL_STATUS_UNSPECIFIED: _ClassVar[InstallStatus]
    INSTALL_STATUS_INSTALLED: _ClassVar[InstallStatus]
    INSTALL_STATUS_FAILED: _ClassVar[InstallStatus]
    INSTALL_STATUS_ROLLED_BACK: _ClassVar[InstallStatus]
    INSTALL_STATUS_HEALTHY: _ClassVar[InstallStatus]
KEEP_REASON_UNSPECIFIED: KeepReason
KEEP_REASON_UNCERTAINTY: KeepReason
KEEP_REASON_NOVELTY: KeepReason
KEEP_REASON_RANDOM: KeepReason
KEEP_REASON_MANUAL: KeepReason
ACK_STATUS_UNSPECIFIED: AckStatus
ACK_STATUS_STORED: AckStatus
ACK_STATUS_ALREADY_STORED: AckStatus
ACK_STATUS_REJECTED: AckStatus
INSTALL_STATUS_UNSPECIFIED: InstallStatus
INSTALL_STATUS_INSTALLED: InstallStatus
INSTALL_STATUS_FAILED: InstallStatus
INSTALL_STATUS_ROLLED_BACK: InstallStatus
INSTALL_STATUS_HEALTHY: InstallStatus

class Scores(_message.Message):
    __slots__ = ("least_confidence", "margin", "entropy", "novelty", "combined", "novelty_distance")
    LEAST_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_FIELD_NUMBER: _ClassVar[int]
    COMBINED_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    least_confidence: float
    margin: float
    entropy: float
    novelty: float
    combined: float
    novelty_distance: float
    def __init__(self, least_confidence: _Optional[float] = ..., margin: _Optional[float] = ..., entropy: _Optional[float] = ..., novelty: _Optional[float] = ..., combined: _Optional[float] = ..., novelty_distance: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("candidate_id", "device_id", "capture_time_ms", "model_version", "jpeg", "width", "height", "embedding", "probabilities", "scores", "reason", "metadata", "embedding_int8", "embedding_scale")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_INT8_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SCALE_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    device_id: str
    capture_time_ms: int
    model_version: int
    jpeg: bytes
    width: int
    height: int
    embedding: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    scores: Scores
    reason: KeepReason
    metadata: _containers.ScalarMap[str, str]
    embedding_int8: bytes
    embedding_scale: float
    def __init__(self, candidate_id: _Optional[str] = ..., device_id: _Optional[str] = ..., capture_time_ms: _Optional[int] = ..., model_version: _Optional[int] = ..., jpeg: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., embedding: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ..., scores: _Optional[_Union[Scores, _Mapping]] = ..., reason: _Optional[_Union[KeepReason, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., embedding_int8: _Optional[bytes] = ..., embedding_scale: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("candidate_id", "status", "detail")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    status: AckStatus
    detail: str
    def __init__(self, candidate_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("device_id", "current_version", "channel")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    current_version: int
    channel: str
    def __init__(self, device_id: _Optional[str] = ..., current_version: _Optional[int] = ..., channel: _Optional[str] = ...) -> None: ...

class BundleFile(_message.Message):
    __slots__ = ("path", "sha256", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("model_name", "version", "files", "rollout_id", "revocation", "revocation_signature", "health_frames")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FRAMES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    rollout_id: str
    revocation: bytes
    revocation_signature: bytes
    health_frames: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ..., rollout_id: _Optional[str] = ..., revocation: _Optional[bytes] = ..., revocation_signature: _Optional[bytes] = ..., health_frames: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("device_id", "version", "path", "offset", "max_chunk_bytes")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    version: int
    path: str
    offset: int
    max_chunk_bytes: int
    def __init__(self, device_id: _Optional[str] = ..., version: _Optional[int] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("frames", "mean_confidence", "mean_novelty", "latency_p50_ms", "previous_version", "previous_frames", "previous_mean_confidence", "previous_mean_novelty", "previous_latency_p50_ms", "errors")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_NOVELTY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MEAN_NOVELTY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    frames: int
    mean_confidence: float
    mean_novelty: float
    latency_p50_ms: float
    previous_version: int
    previous_frames: int
    previous_mean_confidence: float
    previous_mean_novelty: float
    previous_latency_p50_ms: float
    errors: int
    def __init__(self, frames: _Optional[int] = ..., mean_confidence: _Optional[float] = ..., mean_novelty: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., previous_version: _Optional[int] = ..., previous_frames: _Optional[int] = ..., previous_mean_confidence: _Optional[float] = ..., previous_mean_novelty: _Optional[float] = ..., previous_latency_p50_ms: _Optional[float] = ..., errors: _Optional[int] = ...) -> None: ...

class InstallReport(_message.Message):
    __slots__ = ("device_id", "version", "status", "detail", "smoke_latency_ms", "rollout_id", "health", "bytes_fetched")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SMOKE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FETCHED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    version: int
    status: InstallStatus
    detail: str
    smoke_latency_ms: float
    rollout_id: str
    health: ModelHealth
    bytes_fetched: int
    def __init__(self, device_id: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[_Union[InstallStatus, str]] = ..., detail: _Optional[str] = ..., smoke_latency_ms: _Optional[float] = ..., rollout_id: _Optional[str] = ..., health: _Optional[_Union[ModelHealth, _Mapping]] = ..., bytes_fetched: _Optional[int] = ...) -> None: ...

class InstallReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("device_id", "model_version", "frames_seen", "frames_kept", "candidates_acked", "spool_depth", "spool_bytes", "fps", "agent_version", "device_time_ms", "status", "inference_p50_ms", "inference_p99_ms", "candidates_evicted", "candidates_rejected", "bytes_uploaded", "spool_cap_bytes")
    class StatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SEEN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_ACKED_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_EVICTED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    SPOOL_CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model_version: int
    frames_seen: int
    frames_kept: int
    candidates_acked: int
    spool_depth: int
    spool_bytes: int
    fps: float
    agent_version: str
    device_time_ms: int
    status: _containers.ScalarMap[str, str]
    inference_p50_ms: float
    inference_p99_ms: float
    candidates_evicted: int
    candidates_rejected: int
    bytes_uploaded: int
    spool_cap_bytes: int
    def __init__(self, device_id: _Optional[str] = ..., model_version: _Optional[int] = ..., frames_seen: _Optional[int] = ..., frames_kept: _Optional[int] = ..., candidates_acked: _Optional[int] = ..., spool_depth: _Optional[int] = ..., spool_bytes: _Optional[int] = ..., fps: _Optional[float] = ..., agent_version: _Optional[str] = ..., device_time_ms: _Optional[int] = ..., status: _Optional[_Mapping[str, str]] = ..., inference_p50_ms: _Optional[float] = ..., inference_p99_ms: _Optional[float] = ..., candidates_evicted: _Optional[int] = ..., candidates_rejected: _Optional[int] = ..., bytes_uploaded: _Optional[int] = ..., spool_cap_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time_ms", "interval_s")
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    server_time_ms: int
    interval_s: int
    def __init__(self, server_time_ms: _Optional[int] = ..., interval_s: _Optional[int] = ...) -> None: ...
