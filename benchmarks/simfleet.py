"""A fleet of simulated devices in one process: the real updater, without cameras.

Each device is an enrolled device with its own token and gRPC channel, its own models
directory, a `ModelSlot` holding a real ONNX Runtime session of its first bundle, and a real
`edge_agent.updater.ModelUpdater` watching the cloud: it downloads (reusing files it holds),
verifies signatures and hashes, smoke-runs, swaps and reports exactly as an agent does. What is
simulated is the camera (there are no frames, so the health check is the load and smoke run)
and, where a test asks for it, a device-specific fault: `faulty` devices fail to load chosen
versions, as a model with an operator their hardware lacks would.

Used by tests/integration/test_fleet_rollout.py (100 devices, a rollout that must abort at
the canary) and benchmarks/model_push.py (B5: time and bytes to update a whole fleet).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cloud_selector.auth import enroll_device
from edge_agent.bundle import BundleError
from edge_agent.health import HealthPolicy
from edge_agent.runtime import LoadedModel, ProviderSettings
from edge_agent.signing import BundleVerifier
from edge_agent.transport import Backoff, DeviceCredentials, open_channel
from edge_agent.updater import ModelSlot, ModelUpdater

# One ORT thread per simulated device: a hundred sessions share two cores.
_SETTINGS = ProviderSettings(providers=("CPUExecutionProvider",), intra_op_threads=1, warmup_runs=0)


class SimulatedFault(BundleError):
    """What a faulty device raises when it loads a version it cannot run."""


@dataclass
class SimDevice:
    device_id: str
    slot: ModelSlot
    updater: ModelUpdater
    channel: grpc.Channel
    thread: threading.Thread | None = None
    loads: list[int] = field(default_factory=list)  # versions it tried to load, in order

    @property
    def version(self) -> int:
        return self.slot.version


class SimulatedFleet:
    def __init__(self, *, catalog, address: str, root: Path, first_bundle: Path, n: int,
                 verifier: BundleVerifier = BundleVerifier(), channel: str = "",
                 faulty: Callable[[str, int], bool] = lambda device, version: False, prefix: str = "sim"):
        """`faulty(device_id, version)` says whether that device fails to load that version."""
        self.devices: list[SimDevice] = []
        self._stop = threading.Event()
        for i in range(n):
            device_id = f"{prefix}-{i:03d}"
            token = enroll_device(catalog, device_id).token
            models_dir = Path(root) / device_id
            models_dir.mkdir(parents=True, exist_ok=True)
            rpc = open_channel(address, credentials=DeviceCredentials(device_id, token))
            slot = ModelSlot(LoadedModel(first_bundle, settings=_SETTINGS))
            device = SimDevice(device_id, slot, None, rpc)  # type: ignore[arg-type]
            device.updater = ModelUpdater(
                rpc, device_id=device_id, models_dir=models_dir, slot=slot, release_channel=channel,
                load_model=self._loader(device, faulty), verifier=verifier, health_policy=HealthPolicy(frames=0),
                backoff=Backoff(initial_s=0.2, max_s=2.0))
            self.devices.append(device)

    @staticmethod
    def _loader(device: SimDevice, faulty: Callable[[str, int], bool]):
        def load(bundle_dir: Path) -> LoadedModel:
            model = LoadedModel(bundle_dir, settings=_SETTINGS)
            device.loads.append(model.version)
            if faulty(device.device_id, model.version):
                raise SimulatedFault(f"{device.device_id} cannot run v{model.version} (simulated fault)")
            return model
        return load

    def start(self) -> None:
        for device in self.devices:
            device.thread = threading.Thread(target=device.updater.run, args=(self._stop,), daemon=True,
                                             name=f"updater-{device.device_id}")
            device.thread.start()

    def stop(self) -> None:
        self._stop.set()
        for device in self.devices:
            if device.thread is not None:
                device.thread.join(timeout=10)
            device.channel.close()

    def versions(self) -> dict[str, int]:
        return {d.device_id: d.version for d in self.devices}

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
        """Seconds until `condition()` held; raises TimeoutError with `what`."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)
        return time.monotonic() - started

    def bytes_fetched(self) -> list[int]:
        return [d.updater.bytes_fetched_total for d in self.devices]


def clean(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
