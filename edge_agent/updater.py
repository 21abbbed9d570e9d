"""Watch the cloud for model assignments; download, verify and hot-swap new bundles, judge their
first frames, and roll back on the device when they misbehave.

An install goes through six stages (their names appear in logs and in the crash-test hook):

    download  each listed file into <models_dir>/staging/v<N>/: kept if an earlier attempt staged
              it, copied if the running or the kept previous bundle holds one with the same
              sha256 and size (a head-only update fetches only the head), else fetched from
              where the staged copy ends; each is checked against the assignment's sha256
    verify    the `BundleVerifier` (signature with trusted keys, every file's sha256); the signed
              manifest's version must equal the assignment's (which nobody signed) and be newer
              than the running one (a replayed old bundle, even validly signed, is a rollback)
    stage     move it to <models_dir>/v<N>/ and load it in ONNX Runtime with a smoke run
    swap      record the trial (`model_store`), point CURRENT at it, swap it into the
              `ModelSlot` (the agent reads it between frames), report INSTALLED
    health    judge its first frames against the previous model's last ones
              (`edge_agent.health`); on an inference error or a latency blow-up roll back:
              CURRENT and the slot go back and the version is marked failed
    report    the verdict, HEALTHY or ROLLED_BACK with the ModelHealth figures

Refused before any download, reported FAILED and not remembered: a version not newer than the
running one (unless revoked, below), a bundle over `max_bundle_bytes`, a version revoked or
failed here before. A bundle failing download, verify or stage (hash, signature, version,
smoke run) is reported FAILED and marked failed: never tried again, across restarts. A network
or disk error is reported FAILED unmarked: the next assignment of it retries, resuming.

Going back on purpose takes a signed revocation (`edge_agent.signing`) that verifies, revokes
the running version and targets the assignment's. The revoked version is never installed
again; the target comes from a kept bundle that verifies, else is downloaded and verified as
usual (only the newer-than check skipped); INSTALLED then HEALTHY are reported for it at once.

Every report goes through the outbox in state.json: written before it is sent, removed once
the cloud acknowledged it, resent when the watch (re)connects.

Crash-test hook: EDGE_AGENT_CRASH_AT=<stage> (read by the CLI, passed here as `crash_at`) makes
the process SIGKILL itself: download, after the first chunk of the first fetched file is
written and flushed; verify, stage, health, at their start; swap, after CURRENT is repointed
and before the slot swap; report, just before the verdict's report RPC. Tests use it to prove
that a restart resumes, rolls back or re-sends from each point. Never set it in production.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from edge_agent.bundle import RESERVED_FILES, BundleError, check_relative_path, sha256_file
from edge_agent.health import (HealthMonitor, HealthPolicy, HealthSummary, NullHealthMonitor, health_message,
                               healthy_detail, judge)
from edge_agent.model_store import CURRENT_FILE, BundleRef, ModelStore, ModelStoreError, Trial, remove_unlisted
from edge_agent.runtime import LoadedModel
from edge_agent.signing import BundleVerifier, Revocation, SignatureError, verify_revocation
from edge_agent.transport import Backoff
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

__all__ = ["CRASH_ENV", "CURRENT_FILE", "STAGES", "AssignmentRefused", "ModelSlot", "ModelUpdater"]

DEFAULT_MAX_BUNDLE_BYTES = 200 * 1024 * 1024
CRASH_ENV = "EDGE_AGENT_CRASH_AT"
STAGES = ("download", "verify", "stage", "swap", "health", "report")
# The cloud will never take these reports: drop them rather than block the outbox behind them.
_REJECTED_FOR_GOOD = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


class AssignmentRefused(Exception):
    """Refused before anything was downloaded; reported, not remembered as failed."""


class ModelSlot:
    """The model the agent uses now. Readers take `slot.model` once per frame; a swap replaces
    the reference, so a frame is always scored by one model from start to end. A model swapped
    in with `trial=True` is on trial until `confirm()` or the next swap."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._trial: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.model.version

    def swap(self, model: LoadedModel, *, trial: bool = False) -> None:
        with self._lock:
            self.model = model
            self._trial = model if trial else None

    def confirm(self) -> None:
        with self._lock:
            self._trial = None

    def on_trial(self, model: LoadedModel) -> bool:
        """Whether `model` (as read from `slot.model`) is a new model awaiting its health verdict."""
        return model is self._trial


def _describe(exc: Exception) -> str:
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else str(exc)


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
        health: HealthMonitor | None = None,
        health_policy: HealthPolicy | None = None,
        crash_at: str = "",
    ):
        """`verifier` decides which bundles are trusted (default: no keys, hashes only);
        `max_bundle_bytes` caps an assignment's total size (0 = no cap); `health` is what the
        agent feeds per frame (default: nothing, so the health check passes at once) and
        `health_policy` how it is judged; `crash_at` is the crash-test hook (module docstring)."""
        if crash_at and crash_at not in STAGES:
            raise ValueError(f"{CRASH_ENV}={crash_at!r}: expected one of {', '.join(STAGES)}")
        self._stub = pb_grpc.ModelsStub(channel)
        self.device_id = device_id
        self.store = ModelStore(models_dir)
        self.models_dir = self.store.models_dir
        self.slot = slot
        self._load_model = load_model
        self._release_channel = release_channel
        self._backoff = backoff or Backoff()
        self._verifier = verifier or BundleVerifier()
        self.max_bundle_bytes = max_bundle_bytes
        self._health = health or NullHealthMonitor()
        self.health_policy = health_policy or HealthPolicy()
        self._crash_at = crash_at
        self._stop = threading.Event()
        self._call = None
        self._refusals_reported: set[int] = set()  # revoked/failed versions already refused this run
        self._fetched = 0  # bytes fetched for the install in progress
        self.bytes_fetched_total = 0
        self.bytes_reused_total = 0
        self.installs = 0

    # ------------------------------------------------------------------ the watch loop

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        canceller = threading.Thread(target=self._cancel_on_stop, args=(stop,), daemon=True)
        canceller.start()
        while not stop.is_set():
            try:
                self.flush_reports()
                self._call = self._stub.Watch(
                    pb.WatchRequest(device_id=self.device_id, current_version=self.slot.version, channel=self._release_channel)
                )
                for assignment in self._call:
                    self._backoff.reset()
                    # An older one is installed to be refused and reported, not silently ignored.
                    if assignment.version != self.slot.version and assignment.version not in self._refusals_reported:
                        self.install(assignment)
            except grpc.RpcError as exc:
                if stop.is_set():
                    return
                log.info("model watch ended (%s); reconnecting", exc.code() if hasattr(exc, "code") else exc)
            except ModelStoreError as exc:  # the disk, not the model: the device keeps what it runs
                log.error("model update interrupted: %s; retrying", exc)
            self._backoff.wait(stop)

    def _cancel_on_stop(self, stop: threading.Event) -> None:
        stop.wait()
        if self._call is not None:
            self._call.cancel()

    def _crash_point(self, stage: str) -> None:
        if self._crash_at == stage:
            log.critical("%s=%s: killing this process (crash test)", CRASH_ENV, stage)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ one assignment

    def install(self, assignment: pb.ModelAssignment) -> bool:
        """Take `assignment` through the stages (module docstring); True when it now runs."""
        version = assignment.version
        self._fetched = 0
        try:
            revocation = self._check_assignment(assignment)
        except AssignmentRefused as exc:
            return self._fail(assignment, str(exc), remember=False)
        try:
            if revocation is not None:
                self.store.mark_revoked(revocation.revoked_version, revocation.reason or "revoked by the cloud")
                model = self._kept_bundle(version) or self._prepare(assignment, older_ok=True)
            else:
                model = self._prepare(assignment)
        except BundleError as exc:
            shutil.rmtree(self.store.staging_dir(version), ignore_errors=True)
            return self._fail(assignment, str(exc), remember=True)
        except (OSError, grpc.RpcError) as exc:
            return self._fail(assignment, f"{_describe(exc)} (not marked failed: a later assignment retries)",
                              remember=False)
        if revocation is not None:
            return self._go_back(assignment, revocation, model)
        return self._try_out(assignment, model)

    def _check_assignment(self, assignment: pb.ModelAssignment) -> Revocation | None:
        """What can be refused before downloading anything; the revocation when going back."""
        version, running = assignment.version, self.slot.version
        excluded = self.store.excluded(version)
        if excluded:
            self._refusals_reported.add(version)
            raise AssignmentRefused(f"{excluded}; refused without downloading")
        revocation = None
        if version <= running:
            if not assignment.revocation or version == running:
                raise AssignmentRefused(f"rollback refused: v{version} is not newer than the running v{running}")
            revocation = self._check_revocation(assignment)
        total = sum(f.size for f in assignment.files)
        if self.max_bundle_bytes and total > self.max_bundle_bytes:
            raise AssignmentRefused(f"bundle is {total / 2**20:.1f} MiB, over the {self.max_bundle_bytes / 2**20:.1f} "
                                    "MiB limit (model.max_bundle_mb); not downloaded")
        return revocation

    def _check_revocation(self, assignment: pb.ModelAssignment) -> Revocation:
        try:
            revocation, signer = verify_revocation(assignment.revocation, assignment.revocation_signature,
                                                   self._verifier)
        except SignatureError as exc:
            raise AssignmentRefused(f"rollback refused: {exc}") from exc
        if revocation.revoked_version != self.slot.version:
            raise AssignmentRefused(f"rollback refused: the revocation revokes v{revocation.revoked_version}, but "
                                    f"this device runs v{self.slot.version}")
        if revocation.target_version != assignment.version:
            raise AssignmentRefused(f"rollback refused: the revocation targets v{revocation.target_version}, but the "
                                    f"assignment is for v{assignment.version}")
        log.warning("model v%d revoked (%s; signed by %s): going back to v%d", revocation.revoked_version,
                    revocation.reason or "no reason given", signer or "nobody: no trusted keys", assignment.version)
        return revocation

    # ------------------------------------------------------------------ download, verify, stage

    def _prepare(self, assignment: pb.ModelAssignment, *, older_ok: bool = False) -> LoadedModel:
        version = assignment.version
        staging = self.store.staging_dir(version)
        staging.mkdir(parents=True, exist_ok=True)
        held = self.store.held_files([self.slot.model.bundle_dir])
        for f in assignment.files:
            self._obtain(version, f, staging, held)
        remove_unlisted(staging, {f.path for f in assignment.files})

        self._crash_point("verify")
        verified = self._verifier.verify(staging)
        manifest = verified.manifest
        if not older_ok and manifest.version <= self.slot.version:
            raise BundleError(f"rollback refused: the bundle's manifest says v{manifest.version}, not newer than "
                              f"the running v{self.slot.version}")
        if manifest.version != version:
            raise BundleError(f"bundle says version {manifest.version}, assignment says {version}")
        if verified.signed_by:
            log.info("model v%d: signature by key %s verified", version, verified.signed_by)

        self._crash_point("stage")
        final = self.store.bundle_dir(version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        try:
            return self._load_model(final)
        except BundleError:
            shutil.rmtree(final, ignore_errors=True)
            raise

    def _obtain(self, version: int, f: pb.BundleFile, staging: Path, held: dict[tuple[str, int], Path]) -> None:
        if f.path not in RESERVED_FILES:
            check_relative_path(f.path)
        dest = staging / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and dest.stat().st_size == f.size and sha256_file(dest) == f.sha256:
            return  # staged by an earlier attempt
        source = held.get((f.sha256, f.size))
        if source is not None:
            shutil.copyfile(source, dest)
            if sha256_file(dest) == f.sha256:
                self.bytes_reused_total += f.size
                return
            log.warning("%s no longer matches its manifest; fetching %s instead", source, f.path)
            dest.unlink()
        self._fetch(version, f, dest)

    def _fetch(self, version: int, f: pb.BundleFile, dest: Path) -> None:
        offset = dest.stat().st_size if dest.exists() and dest.stat().st_size < f.size else 0
        with open(dest, "ab" if offset else "wb") as out:
            for chunk in self._stub.Fetch(
                pb.FetchRequest(device_id=self.device_id, version=version, path=f.path, offset=offset)
            ):
                if chunk.offset != out.tell():
                    raise BundleError(f"{f.path}: chunk at offset {chunk.offset}, expected {out.tell()}")
                first = self._fetched == 0
                out.write(chunk.data)
                self._fetched += len(chunk.data)
                self.bytes_fetched_total += len(chunk.data)
                if out.tell() > f.size:
                    raise BundleError(f"{f.path}: larger than the announced {f.size} bytes")
                if first:
                    out.flush()
                    os.fsync(out.fileno())
                    self._crash_point("download")
        actual = sha256_file(dest)
        if actual != f.sha256:
            dest.unlink(missing_ok=True)
            raise BundleError(f"{f.path}: sha256 {actual[:12]}… does not match the assignment's {f.sha256[:12]}…")

    def _kept_bundle(self, version: int) -> LoadedModel | None:
        """`version` loaded from a bundle this device kept, when one verifies; else None."""
        previous = self.store.previous
        candidates = [previous.dir] if previous is not None and previous.version == version else []
        for bundle_dir in dict.fromkeys([*candidates, self.store.bundle_dir(version)]):
            if not bundle_dir.is_dir():
                continue
            try:
                found = self._verifier.verify(bundle_dir).manifest.version
                if found != version:
                    raise BundleError(f"it holds v{found}")
                return self._load_model(bundle_dir)
            except BundleError as exc:
                log.warning("kept bundle %s is unusable (%s); downloading v%d", bundle_dir, exc, version)
        return None

    # ------------------------------------------------------------------ swap, health, report

    def _try_out(self, assignment: pb.ModelAssignment, model: LoadedModel) -> bool:
        version, previous = assignment.version, self.slot.model
        policy = self.health_policy
        if assignment.health_frames:
            policy = HealthPolicy(assignment.health_frames, policy.timeout_s, policy.max_latency_ratio)
        before = self._health.summary(previous.version, last=policy.frames)
        self.store.begin_trial(Trial(version, BundleRef(previous.version, previous.bundle_dir)))
        self.store.point_current(model.bundle_dir)
        self._crash_point("swap")
        self._health.begin(version)
        self.slot.swap(model, trial=True)
        self.installs += 1
        log.info("model swapped: v%d -> v%d; on trial", previous.version, version)
        self._send(self._report(assignment, pb.INSTALL_STATUS_INSTALLED, "", smoke_latency_ms=model.smoke_latency_ms))

        self._crash_point("health")
        after = HealthSummary(version)
        if policy.frames:
            after = self._health.wait(version, policy.frames, policy.timeout_s, self._stop)
        reason = judge(after, before, policy.max_latency_ratio)
        health = health_message(after, before)
        if reason:
            self.store.point_current(previous.bundle_dir)
            self.slot.swap(previous)
            detail = f"rolled back to v{previous.version}: {reason}"
            log.error("model v%d %s", version, detail)
            self.store.finish_trial(self._report(assignment, pb.INSTALL_STATUS_ROLLED_BACK, detail, health=health),
                                    failed_reason=reason)
        else:
            self.slot.confirm()
            detail = healthy_detail(after, before, policy, monitor_enabled=self._health.enabled)
            log.info("model v%d healthy: %s", version, detail)
            self.store.finish_trial(self._report(assignment, pb.INSTALL_STATUS_HEALTHY, detail, health=health))
        self._send(verdict=True)  # the verdict was queued with the trial's end, in one write
        self.store.prune(self.slot.version)
        return not reason

    def _go_back(self, assignment: pb.ModelAssignment, revocation: Revocation, model: LoadedModel) -> bool:
        self.store.point_current(model.bundle_dir)
        self.slot.swap(model)
        self.store.set_previous(None)  # the one before was the revoked version
        self.installs += 1
        detail = (f"v{revocation.revoked_version} revoked ({revocation.reason or 'no reason given'}); back on "
                  f"v{model.version}")
        log.warning("model swapped: %s", detail)
        self._send(self._report(assignment, pb.INSTALL_STATUS_INSTALLED, detail, smoke_latency_ms=model.smoke_latency_ms))
        self._send(self._report(assignment, pb.INSTALL_STATUS_HEALTHY, detail), verdict=True)
        self.store.prune(self.slot.version)
        return True

    def _fail(self, assignment: pb.ModelAssignment, reason: str, *, remember: bool) -> bool:
        log.error("model v%d refused: %s; keeping v%d", assignment.version, reason, self.slot.version)
        if remember:
            self.store.mark_failed(assignment.version, reason)
        self._send(self._report(assignment, pb.INSTALL_STATUS_FAILED, reason), verdict=True)
        return False

    def _report(self, assignment: pb.ModelAssignment, status: int, detail: str, *, smoke_latency_ms: float = 0.0,
                health: pb.ModelHealth | None = None) -> pb.InstallReport:
        return pb.InstallReport(device_id=self.device_id, version=assignment.version, status=status,
                                detail=detail[:500], smoke_latency_ms=smoke_latency_ms,
                                rollout_id=assignment.rollout_id, health=health, bytes_fetched=self._fetched)

    def _send(self, report: pb.InstallReport | None = None, *, verdict: bool = False) -> None:
        """Queue `report` in the outbox (persisted first), then send what the outbox holds."""
        if report is not None:
            self.store.queue_report(report)
        if verdict:
            self._crash_point("report")
        self.flush_reports()

    def flush_reports(self) -> int:
        """Send the outbox's reports, oldest first, removing each one the cloud acknowledged;
        stop at the first that fails (the next (re)connect resends it). Returns how many went."""
        sent = 0
        for entry in self.store.pending_reports():
            try:
                self._stub.ReportInstall(entry.report, timeout=10)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code not in _REJECTED_FOR_GOOD:
                    log.warning("could not report v%d (%s); will resend", entry.report.version, code or exc)
                    break
                log.error("the cloud refused the report on v%d (%s); dropping it", entry.report.version, _describe(exc))
            self.store.ack_report(entry.id)
            sent += 1
        return sent
