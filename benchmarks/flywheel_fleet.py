"""B1's fleet: real edge agents in this process, talking gRPC to a real cloud_selector on loopback.

Per camera, exactly the parts `edge-agent run` wires (edge_agent/cli.py): a `ModelSlot` with an
ONNX Runtime session of its bundle (`LoadedModel`), the `Agent` loop (scores, `KeepPolicy`, the
appearance repeat check), a durable `Spool`, an `Uploader` stream and a `ModelUpdater` that
downloads, verifies (signature and sha256), smoke-runs and hot-swaps every released version.
Each camera has its own enrolled token and channel. What is simulated is the camera itself: a
`MemorySource` hands the agent one round's rendered frames with capture timestamps at 10 fps.

In process rather than as subprocesses (flywheel_demo does that) because a full B1 streams
~10^5 frames per seed through five arms: one ORT thread per camera, no process start-up, and
the counters read directly instead of through heartbeats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from cloud_selector.auth import DeviceAuthenticator, enroll_device
from cloud_selector.cli import Services, open_services
from cloud_selector.server import RunningServer, create_server
from edge_agent.agent import Agent
from edge_agent.appearance import RecentFrames
from edge_agent.health import HealthPolicy
from edge_agent.policy import KeepPolicy
from edge_agent.runtime import LoadedModel, ProviderSettings
from edge_agent.signing import BundleVerifier
from edge_agent.sources import FILE_DONE, Frame
from edge_agent.spool import Spool
from edge_agent.transport import Backoff, DeviceCredentials, open_channel
from edge_agent.updater import ModelSlot, ModelUpdater
from edge_agent.uploader import Uploader

from benchmarks.flywheel_data import FPS, UPLOAD_JPEG_QUALITY

# One ORT thread per camera, as on a small device; no warm-up runs (nothing to warm on a CPU).
DEVICE_SETTINGS = ProviderSettings(providers=("CPUExecutionProvider",), intra_op_threads=1, warmup_runs=0)


class FleetError(RuntimeError):
    """A camera failed or the fleet did not reach a state in time."""


class MemorySource:
    """A file-like FrameSource over frames in memory: one named "file" per round, resumable
    (frames up to the spool's recorded progress are skipped, as VideoFileSource does)."""

    live = False

    def __init__(self, name: str, frames: Sequence[np.ndarray], start_ms: int, fps: float = FPS,
                 source_name: str = ""):
        self.name, self._frames, self.start_ms, self.fps, self.source_name = name, frames, start_ms, fps, source_name

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None):
        done = (resume or {}).get(self.name, -1)
        if done >= FILE_DONE:
            return
        last = len(self._frames) - 1
        for i, image in enumerate(self._frames):
            if i <= done:
                continue
            if stop.is_set():
                return
            yield Frame(image=image, source=self.name, index=i,
                        capture_time_ms=self.start_ms + round(i * 1000 / self.fps), last_in_file=i == last,
                        source_name=self.source_name)


@dataclass
class Counters:
    frames_seen: int = 0
    frames_kept: int = 0
    acked: int = 0
    bytes_acked: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def plus(self, other: "Counters", sign: int = 1) -> "Counters":
        def merge(a: dict, b: dict) -> dict:
            merged = {k: a.get(k, 0) + sign * b.get(k, 0) for k in {*a, *b}}
            return {k: v for k, v in sorted(merged.items()) if v}

        return Counters(self.frames_seen + sign * other.frames_seen, self.frames_kept + sign * other.frames_kept,
                        self.acked + sign * other.acked, self.bytes_acked + sign * other.bytes_acked,
                        merge(self.kept, other.kept), merge(self.dropped, other.dropped))

    def minus(self, other: "Counters") -> "Counters":
        return self.plus(other, -1)


@dataclass
class Camera:
    device_id: str
    agent: Agent
    spool: Spool
    uploader: Uploader
    updater: ModelUpdater
    channel: grpc.Channel
    threads: list[threading.Thread] = field(default_factory=list)

    def counters(self) -> Counters:
        s = self.agent.stats
        return Counters(s.frames_seen, s.frames_kept, self.uploader.acked, self.uploader.bytes_acked, dict(s.kept),
                        dict(s.dropped))


class ArmFleet:
    """One arm's cloud (catalog, blobs, registry, gRPC server) and its cameras."""

    def __init__(self, root: Path, *, watch_poll_s: float = 0.2, max_workers: int = 48):
        self.root = Path(root)
        self.services: Services = open_services(self.root / "cloud")
        self.server: RunningServer = create_server(
            "127.0.0.1:0", catalog=self.services.catalog, blobs=self.services.blobs,
            auth=DeviceAuthenticator(self.services.catalog), max_workers=max_workers, watch_poll_s=watch_poll_s)
        self.cameras: list[Camera] = []
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def verifier(self) -> BundleVerifier:
        """Devices trust the registry's key only (as `model.trusted_keys` would say)."""
        key = self.services.registry.signing_key
        return BundleVerifier({key.key_id: key.public})

    def add_camera(self, device_id: str, first_bundle: Path, policy: KeepPolicy, recent: RecentFrames | None,
                   embedding: str | None = None) -> Camera:
        """Enroll a camera and start its uploader and updater; it runs `first_bundle` (the factory
        model) until the updater swaps in the released version. `embedding`: the agent's
        upload.embedding (None = its default)."""
        token = enroll_device(self.services.catalog, device_id).token
        channel = open_channel(self.address, credentials=DeviceCredentials(device_id, token))
        state = self.root / "devices" / device_id
        slot = ModelSlot(LoadedModel(first_bundle, settings=DEVICE_SETTINGS))
        spool = Spool(state / "spool.sqlite", synchronous="NORMAL")
        agent = Agent(device_id=device_id, source=MemorySource("none", [], 0), slot=slot, policy=policy, spool=spool,
                      jpeg_quality=UPLOAD_JPEG_QUALITY, recent=recent,
                      **({"embedding_encoding": embedding} if embedding else {}))
        uploader = Uploader(channel, spool, backoff=Backoff(initial_s=0.1, max_s=1.0))
        updater = ModelUpdater(channel, device_id=device_id, models_dir=state / "models", slot=slot,
                               load_model=lambda path: LoadedModel(path, settings=DEVICE_SETTINGS),
                               verifier=self.verifier(), health_policy=HealthPolicy(frames=0),
                               backoff=Backoff(initial_s=0.2, max_s=2.0))
        camera = Camera(device_id, agent, spool, uploader, updater, channel)
        for name, target in (("uploader", uploader.run), ("updater", updater.run)):
            thread = threading.Thread(target=target, args=(self._stop,), daemon=True, name=f"{name}-{device_id}")
            thread.start()
            camera.threads.append(thread)
        self.cameras.append(camera)
        return camera

    def stream(self, sources: dict[str, MemorySource], timeout_s: float = 1800.0) -> dict[str, Counters]:
        """Run each camera's agent over its source (in parallel, one thread each), then wait until
        every spool is empty (all kept frames acknowledged). Returns each camera's counters for
        this round."""
        before = {c.device_id: c.counters() for c in self.cameras}
        errors: dict[str, BaseException] = {}

        def run(camera: Camera) -> None:
            try:
                camera.agent.run(self._stop)
            except BaseException as exc:  # reported below, in the caller's thread
                errors[camera.device_id] = exc

        workers = []
        for camera in self.cameras:
            if camera.device_id in sources:
                camera.agent.source = sources[camera.device_id]
                workers.append(threading.Thread(target=run, args=(camera,), name=f"agent-{camera.device_id}"))
        for w in workers:
            w.start()
        deadline = time.monotonic() + timeout_s
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if any(w.is_alive() for w in workers):
            self._stop.set()  # the agents stop at their next frame
            raise FleetError(f"the agents did not finish their frames within {timeout_s:.0f} s")
        if errors:
            device, exc = next(iter(errors.items()))
            raise FleetError(f"agent {device} failed: {type(exc).__name__}: {exc}") from exc
        self.wait(lambda: all(c.spool.stats().depth == 0 for c in self.cameras), timeout_s, "every spool to drain")
        return {c.device_id: c.counters().minus(before[c.device_id]) for c in self.cameras if c.device_id in sources}

    def wait_version(self, version: int, timeout_s: float = 300.0) -> float:
        """Seconds until every camera runs `version` (downloaded, verified, swapped)."""
        return self.wait(lambda: all(c.agent.slot.version == version for c in self.cameras), timeout_s,
                         f"every camera to run v{version}")

    @staticmethod
    def wait(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout_s:
                raise FleetError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)
        return time.monotonic() - started

    def close(self) -> None:
        self._stop.set()
        for camera in self.cameras:
            for thread in camera.threads:
                thread.join(timeout=10)
            camera.channel.close()
            camera.spool.close()
        self.server.stop(grace_s=0.5)
        self.services.catalog.close()
