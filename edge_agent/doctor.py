"""`edge-agent doctor`: small independent checks that say what is wrong and what to do.

Each check takes plain arguments (a directory, a callable, a gRPC channel) and returns a
`CheckResult`; none raises for the problem it looks for, so one broken part never hides the
report on the others. The CLI builds the arguments from the config, runs the checks, prints
`render_report` and exits with `exit_code`.

    model        the bundle verifies, loads in ONNX Runtime and smoke-runs; which providers run it
    source       the frame source opens and yields one frame within a timeout
    server       the cloud answers a heartbeat      (check_cloud)
    credentials  the cloud accepts this device      (check_cloud)
    clock        device and cloud clocks agree
    disk         the state dir is writable and has room for the outbox cap

A check that cannot run because another failed (credentials when the server is unreachable,
clock without a server time) comes back `skipped`, which counts as not ok.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import onnxruntime as ort

from edge_agent import __version__
from edge_agent.bundle import BundleError
from edge_agent.runtime import LoadedModel
from edge_agent.signing import BundleVerifier
from edge_agent.sources import SourceError
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

DISK_HEADROOM = 0.10  # free space must cover the spool cap plus this share (models, WAL, logs)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    hint: str = ""  # what to do, in plain words; shown only when not ok
    skipped: bool = False


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, ok=False, detail=f"not checked: {why}", skipped=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


# ---------------------------------------------------------------- model


def check_model(bundle_dir: Path, providers: list[str], settings: object | None = None) -> CheckResult:
    """Load and smoke-run the bundle; fail too when a requested accelerator is not in use,
    because a Jetson silently running on CPU is the problem an operator most needs to see.

    `settings`, when given, is handed to LoadedModel as is (the runtime's provider settings:
    TensorRT cache, fp16, threads), so the check loads the model the way `run` will. With a
    TensorRT engine cache configured, the first check builds the engine (minutes on a Jetson)
    and later starts reuse it.
    """
    options = {"settings": settings} if settings is not None else {}
    try:
        model = LoadedModel(Path(bundle_dir), providers=providers, **options)
    except BundleError as exc:
        message = str(exc) if str(bundle_dir) in str(exc) else f"{bundle_dir}: {exc}"
        return CheckResult("model", False, message,
                           "point model.bundle_dir at a complete bundle (manifest.json, the ONNX file, the novelty "
                           "bank), e.g. one exported with `cloud-selector models export`")
    except ValueError as exc:  # the runtime's answer to provider settings it cannot use
        return CheckResult("model", False, f"provider settings refused: {exc}",
                           "check the spelling of model.providers (e.g. \"CUDAExecutionProvider\") and the other "
                           "[model] keys")
    used = getattr(model, "providers", None)
    if used is None:  # older runtime: infer what ORT could honour from what this build has
        available = set(ort.get_available_providers())
        used = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        if "CPUExecutionProvider" not in used:
            used.append("CPUExecutionProvider")
    used = list(used)
    detail = (f"v{model.version} from {bundle_dir} on {', '.join(used)}; "
              f"smoke run {model.smoke_latency_ms:.1f} ms")
    missing = [p for p in providers if p not in used and p != "CPUExecutionProvider"]
    if missing:
        return CheckResult("model", False, f"{detail}; requested but not in use: {', '.join(missing)}",
                           "install the onnxruntime build with those providers (on a Jetson: NVIDIA's "
                           "onnxruntime-gpu wheel, see docs/jetson.md), or remove them from model.providers")
    return CheckResult("model", True, detail)


# ---------------------------------------------------------------- source


@dataclass
class _Outcome:
    size: tuple[int, int] | None = None
    error: BaseException | None = None


def check_signature(bundle_dir: Path, verifier: BundleVerifier) -> CheckResult:
    """Whether the configured bundle carries a signature this device trusts: an agent without
    trusted keys installs whatever a server (or someone on the path) sends it."""
    if not verifier.trusted:
        return CheckResult("signature", False, "model.trusted_keys is empty: model bundles are accepted unsigned",
                           "run `cloud-selector keys show --out signing_key.pub.pem` in the cloud, copy the file to "
                           "the device and list it in model.trusted_keys")
    try:
        verified = verifier.verify(Path(bundle_dir))
    except BundleError as exc:  # SignatureError is a BundleError too
        return CheckResult("signature", False, str(exc),
                           "export the bundle again with `cloud-selector models export` from a cloud whose key is "
                           "in model.trusted_keys")
    if not verified.signed_by:
        return CheckResult("signature", False, f"{bundle_dir} is unsigned (model.require_signature is off)",
                           "export a signed bundle with `cloud-selector models export`")
    return CheckResult("signature", True, f"{bundle_dir} signed by trusted key {verified.signed_by}")


def check_source(open_and_read: Callable[[], tuple[int, int]], timeout_s: float = 10.0) -> CheckResult:
    """Open the source and read one frame, giving up after `timeout_s`.

    The read runs in a daemon thread because camera and RTSP opens can block for minutes
    inside OpenCV with no way to interrupt them; a hung thread is abandoned, not joined.
    Errors other than SourceError/OSError are bugs and are re-raised here.
    """
    outcome = _Outcome()

    def target() -> None:
        try:
            outcome.size = open_and_read()
        except BaseException as exc:  # handed to the calling thread below, not swallowed
            outcome.error = exc

    started = time.monotonic()
    worker = threading.Thread(target=target, name="doctor-source", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return CheckResult("source", False, f"no frame within {timeout_s:g} s",
                           "check that the camera is connected and not held by another process, that the RTSP URL "
                           "or GStreamer pipeline is right (try it with gst-launch-1.0), and that the service user "
                           "may read the device (group video)")
    if isinstance(outcome.error, (SourceError, OSError)):
        return CheckResult("source", False, str(outcome.error),
                           "check source.type and source.path, and that the service user may read them")
    if outcome.error is not None:
        raise outcome.error
    assert outcome.size is not None
    width, height = outcome.size
    if width <= 0 or height <= 0:
        return CheckResult("source", False, f"first frame is empty ({width}x{height})",
                           "the source opened but delivered no image; check the pipeline's caps or the file")
    return CheckResult("source", True, f"first frame {width}x{height} in {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------- cloud


def check_cloud(channel: grpc.Channel, device_id: str, timeout_s: float = 5,
                metadata: Sequence[tuple[str, str]] = ()) -> tuple[CheckResult, CheckResult, int | None]:
    """Send one Fleet.Heartbeat; returns (server, credentials, server_time_ms or None).

    `metadata` is for callers whose channel does not already attach the device credentials
    (x-device-id, authorization: Bearer). The heartbeat is marked status["doctor"] = "true" so
    the fleet view can tell it from a running agent's.
    """
    request = pb.HeartbeatRequest(device_id=device_id, agent_version=__version__,
                                  device_time_ms=int(time.time() * 1000), status={"doctor": "true"})
    try:
        response = pb_grpc.FleetStub(channel).Heartbeat(request, timeout=timeout_s, metadata=tuple(metadata) or None)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        text = exc.details() if hasattr(exc, "details") else str(exc)
        return _classify(code, text or "", timeout_s, device_id)
    server = CheckResult("server", True, f"answered a heartbeat (server time {response.server_time_ms})")
    credentials = CheckResult("credentials", True, f"device {device_id!r} accepted")
    return server, credentials, int(response.server_time_ms) or None


def _classify(code: grpc.StatusCode, text: str, timeout_s: float,
              device_id: str) -> tuple[CheckResult, CheckResult, int | None]:
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        why = f"no answer within {timeout_s:g} s" if code == grpc.StatusCode.DEADLINE_EXCEEDED else text
        server = CheckResult("server", False, f"unreachable ({code.name}: {why})",
                             "check cloud.address (host:port of `cloud-selector serve`), that a firewall lets the "
                             "device reach that port, and that TLS matches the server (cloud.tls_ca_file set for a "
                             "TLS server, unset for a plaintext one)")
        return server, _skip("credentials", "the server did not answer"), None
    if code == grpc.StatusCode.UNAUTHENTICATED:
        server = CheckResult("server", True, "reachable")
        credentials = CheckResult("credentials", False, f"refused ({code.name}: {text})",
                                  "enroll the device with `cloud-selector devices add NAME` and put the id it prints "
                                  "in device.id and the token in device.token_file; check neither was mistyped or "
                                  "revoked")
        return server, credentials, None
    if code == grpc.StatusCode.PERMISSION_DENIED:
        server = CheckResult("server", True, "reachable")
        credentials = CheckResult("credentials", False, f"the token is not for device {device_id!r} ({text})",
                                  "device.id must be the id the token was issued for by `cloud-selector devices add`")
        return server, credentials, None
    server = CheckResult("server", False, f"answered {code.name}: {text}",
                         "cloud.address may point at something other than cloud-selector, or at an older "
                         "version; check the server's log")
    return server, _skip("credentials", "the server did not answer the heartbeat"), None


# ---------------------------------------------------------------- clock


def check_clock(server_time_ms: int | None, local_ms: int, max_skew_s: float = 30) -> CheckResult:
    """Compare the device clock with the cloud's (taken from the heartbeat answer)."""
    if server_time_ms is None:
        return _skip("clock", "no server time (the cloud did not answer)")
    skew_s = (local_ms - server_time_ms) / 1000.0
    detail = f"device is {abs(skew_s):.1f} s {'ahead of' if skew_s >= 0 else 'behind'} the cloud"
    if abs(skew_s) > max_skew_s:
        return CheckResult("clock", False, f"{detail} (allowed {max_skew_s:g} s)",
                           "enable time sync on the device (systemd-timesyncd, chrony or NTP); capture times "
                           "and the per-minute upload budget use this clock")
    return CheckResult("clock", True, detail)


# ---------------------------------------------------------------- disk


def check_disk(state_dir: Path, spool_cap_bytes: int) -> CheckResult:
    """The state dir exists (or can be created), takes an fsynced write, and has room for the cap."""
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return CheckResult("disk", False, f"cannot create {state_dir}: {exc.strerror or exc}",
                           "set device.state_dir to a directory the service user can create and write "
                           "(the systemd unit's StateDirectory is /var/lib/edge-agent)")
    # The spool fsyncs every put (synchronous=FULL): a probe that is written, fsynced and
    # deleted catches read-only mounts and permission problems that os.access() misses.
    probe = state_dir / f".doctor-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"edge-agent doctor probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as exc:
        return CheckResult("disk", False, f"cannot write in {state_dir}: {exc.strerror or exc}",
                           "make the state dir writable by the user the agent runs as (and check the file system "
                           "is not mounted read-only)")
    free = shutil.disk_usage(state_dir).free
    if spool_cap_bytes <= 0:
        return CheckResult("disk", True, f"{state_dir} writable, {_mib(free)} free (no outbox cap set)")
    needed = int(spool_cap_bytes * (1 + DISK_HEADROOM))
    if free < needed:
        return CheckResult("disk", False,
                           f"{_mib(free)} free in {state_dir}, need {_mib(needed)} "
                           f"(outbox cap {_mib(spool_cap_bytes)} + {DISK_HEADROOM:.0%})",
                           "free space on that file system, move device.state_dir to a larger one, or lower the "
                           "outbox cap")
    return CheckResult("disk", True, f"{state_dir} writable, {_mib(free)} free for a {_mib(spool_cap_bytes)} cap")


# ---------------------------------------------------------------- report


def render_report(results: Iterable[CheckResult]) -> str:
    """One line per check: `ok   name: detail`, `FAIL name: detail -> hint`, `skip name: ...`."""
    lines = []
    for r in results:
        if r.ok:
            lines.append(f"ok   {r.name}: {r.detail}")
        elif r.skipped:
            lines.append(f"skip {r.name}: {r.detail}")
        else:
            lines.append(f"FAIL {r.name}: {r.detail}" + (f" -> {r.hint}" if r.hint else ""))
    return "\n".join(lines)


def exit_code(results: Iterable[CheckResult]) -> int:
    """0 when every check passed, 1 otherwise (a skipped check is not a pass)."""
    return 0 if all(r.ok for r in results) else 1
