"""Watch the cloud for model assignments; download, verify and hot-swap new bundles.

Install steps for an assignment:
1. refuse it outright when its version is not newer than the running model's, or when its
   files add up to more than `max_bundle_bytes` (nothing is downloaded);
2. download every file into `<models_dir>/staging/v<N>/`, resuming from what is already there
   (Fetch with an offset), and check each file's sha256 against the assignment; files the
   assignment does not list (left from an earlier attempt) are removed;
3. verify the bundle with the `BundleVerifier`: the signature over manifest.json when keys are
   trusted, then the sha256 of every file against the manifest; then check the signed
   manifest's version: newer than the running model (a replayed old bundle, even one validly
   signed, is a rollback attack) and equal to the assignment's (which nobody signed);
4. move it to `<models_dir>/v<N>/`, load it in ONNX Runtime with a smoke run;
5. point `<models_dir>/CURRENT` at it (atomic rename) and swap it into the `ModelSlot`, which
   the agent reads between frames;
6. report the outcome. On any failure the running model stays and the failure is reported
   (INSTALL_STATUS_FAILED with the reason); a failed version is not tried again.

Going back to an earlier model therefore means publishing its files again as a new version.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from edge_agent.bundle import RESERVED_FILES, BundleError, check_relative_path, sha256_file
from edge_agent.runtime import LoadedModel
from edge_agent.signing import BundleVerifier
from edge_agent.transport import Backoff
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
DEFAULT_MAX_BUNDLE_BYTES = 200 * 1024 * 1024


class ModelSlot:
    """The model the agent uses now. Readers take `slot.model` once per frame; a swap replaces
    the reference, so a frame is always scored by one model from start to end."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.model.version

    def swap(self, model: LoadedModel) -> None:
        with self._lock:
            self.model = model


def installed_bundle(models_dir: Path) -> Path | None:
    """The bundle directory that CURRENT points at, if any."""
    pointer = Path(models_dir) / CURRENT_FILE
    if not pointer.is_file():
        return None
    target = Path(models_dir) / pointer.read_text().strip()
    return target if target.is_dir() else None


def _remove_unlisted(staging: Path, listed: set[str]) -> None:
    """Delete files an earlier attempt left in `staging` that this assignment does not list,
    so that, say, a stale manifest.sig cannot vouch for a bundle that arrived without one."""
    for path in sorted(staging.rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in listed:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _point_current(models_dir: Path, name: str) -> None:
    tmp = models_dir / (CURRENT_FILE + ".tmp")
    tmp.write_text(name)
    os.replace(tmp, models_dir / CURRENT_FILE)


class ModelUpdater:
    def __init__(
        self,
        channel: grpc.Channel,
        *,
        device_id: str,
        models_dir: Path,
        slot: ModelSlot,
        load_model: Callable[[Path], LoadedModel],
        release_channel: str = "",
        backoff: Backoff | None = None,
        verifier: BundleVerifier | None = None,
        max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    ):
        """`verifier` decides which bundles are trusted (default: no keys, hashes only);
        `max_bundle_bytes` caps an assignment's total size (0 = no cap)."""
        self._stub = pb_grpc.ModelsStub(channel)
        self.device_id = device_id
        self.models_dir = Path(models_dir)
        self.slot = slot
        self._load_model = load_model
        self._release_channel = release_channel
        self._backoff = backoff or Backoff()
        self._verifier = verifier or BundleVerifier()
        self.max_bundle_bytes = max_bundle_bytes
        self._call = None
        self._failed_versions: set[int] = set()
        self.installs = 0

    def run(self, stop: threading.Event) -> None:
        canceller = threading.Thread(target=self._cancel_on_stop, args=(stop,), daemon=True)
        canceller.start()
        while not stop.is_set():
            try:
                self._call = self._stub.Watch(
                    pb.WatchRequest(device_id=self.device_id, current_version=self.slot.version, channel=self._release_channel)
                )
                for assignment in self._call:
                    self._backoff.reset()
                    # An older one is installed to be refused and reported, not silently ignored.
                    if assignment.version != self.slot.version and assignment.version not in self._failed_versions:
                        self.install(assignment)
            except grpc.RpcError as exc:
                if stop.is_set():
                    return
                log.info("model watch ended (%s); reconnecting", exc.code() if hasattr(exc, "code") else exc)
            self._backoff.wait(stop)

    def _cancel_on_stop(self, stop: threading.Event) -> None:
        stop.wait()
        if self._call is not None:
            self._call.cancel()

    def install(self, assignment: pb.ModelAssignment) -> bool:
        version = assignment.version
        try:
            self._check_assignment(assignment)
            model = self._stage_and_load(assignment)
        except (BundleError, OSError, grpc.RpcError) as exc:
            log.error("model v%d refused: %s; keeping v%d", version, exc, self.slot.version)
            self._failed_versions.add(version)
            self._report(version, pb.INSTALL_STATUS_FAILED, str(exc)[:500], 0.0, assignment.rollout_id)
            return False
        _point_current(self.models_dir, f"v{version}")
        previous = self.slot.version
        self.slot.swap(model)
        self.installs += 1
        log.info("model swapped: v%d -> v%d", previous, version)
        self._report(version, pb.INSTALL_STATUS_INSTALLED, "", model.smoke_latency_ms, assignment.rollout_id)
        return True

    def _check_assignment(self, assignment: pb.ModelAssignment) -> None:
        """What can be refused before downloading anything."""
        if assignment.version <= self.slot.version:
            raise BundleError(f"rollback refused: v{assignment.version} is not newer than the running "
                              f"v{self.slot.version}")
        total = sum(f.size for f in assignment.files)
        if self.max_bundle_bytes and total > self.max_bundle_bytes:
            raise BundleError(f"bundle is {total / 2**20:.1f} MiB, over the {self.max_bundle_bytes / 2**20:.1f} MiB "
                              "limit (model.max_bundle_mb); not downloaded")

    def _stage_and_load(self, assignment: pb.ModelAssignment) -> LoadedModel:
        version = assignment.version
        staging = self.models_dir / "staging" / f"v{version}"
        staging.mkdir(parents=True, exist_ok=True)
        for f in assignment.files:
            self._download(version, f, staging)
        _remove_unlisted(staging, {f.path for f in assignment.files})
        verified = self._verifier.verify(staging)
        manifest = verified.manifest
        if manifest.version <= self.slot.version:
            raise BundleError(f"rollback refused: the bundle's manifest says v{manifest.version}, not newer than "
                              f"the running v{self.slot.version}")
        if manifest.version != version:
            raise BundleError(f"bundle says version {manifest.version}, assignment says {version}")
        if verified.signed_by:
            log.info("model v%d: signature by key %s verified", version, verified.signed_by)
        final = self.models_dir / f"v{version}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        try:
            return self._load_model(final)
        except BundleError:
            shutil.rmtree(final, ignore_errors=True)
            raise

    def _download(self, version: int, f: pb.BundleFile, staging: Path) -> None:
        if f.path not in RESERVED_FILES:
            check_relative_path(f.path)
        dest = staging / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and dest.stat().st_size == f.size and sha256_file(dest) == f.sha256:
            return
        offset = dest.stat().st_size if dest.exists() and dest.stat().st_size < f.size else 0
        with open(dest, "ab" if offset else "wb") as out:
            for chunk in self._stub.Fetch(
                pb.FetchRequest(device_id=self.device_id, version=version, path=f.path, offset=offset)
            ):
                if chunk.offset != out.tell():
                    raise BundleError(f"{f.path}: chunk at offset {chunk.offset}, expected {out.tell()}")
                out.write(chunk.data)
                if out.tell() > f.size:
                    raise BundleError(f"{f.path}: larger than the announced {f.size} bytes")
        actual = sha256_file(dest)
        if actual != f.sha256:
            dest.unlink(missing_ok=True)
            raise BundleError(f"{f.path}: sha256 {actual[:12]}… does not match the assignment's {f.sha256[:12]}…")

    def _report(self, version: int, status: int, detail: str, latency_ms: float, rollout_id: str) -> None:
        try:
            self._stub.ReportInstall(
                pb.InstallReport(
                    device_id=self.device_id,
                    version=version,
                    status=status,
                    detail=detail,
                    smoke_latency_ms=latency_ms,
                    rollout_id=rollout_id,
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            log.warning("could not report install of v%d: %s", version, exc.code() if hasattr(exc, "code") else exc)
