"""What the device keeps about its models on disk, so that a crash at any moment leaves it on a
model it can trust and a report it still owes the cloud.

    <models_dir>/
        CURRENT            the bundle the device runs: "v<N>" (a directory here) or an
                           absolute path (the configured model.bundle_dir), renamed into place
        v<N>/              installed bundles: the current one and the previous one are kept,
                           older ones deleted (`prune`)
        staging/v<N>/      a download in progress (resumed after a restart); removed once
                           installed, failed, or no longer newer than the running version
        state.json         everything else, one JSON object rewritten atomically (a temporary
                           file, fsync, rename, fsync of the directory):

    {"format": "edgeflywheel.models-state/1",
     "trial":    {"version": 3, "previous": {"version": 2, "dir": "v2"}} | null,
     "previous": {"version": 2, "dir": "v2"} | null,     the bundle that ran before the current one
     "failed":   {"3": "reason"},                         never tried again on this device
     "revoked":  {"4": "reason"},                         never installed again (signed revocation)
     "outbox":   [{"id": 7, "report": {InstallReport as protobuf JSON}}],
     "next_report_id": 8}

A trial is a swapped-in model still waiting for its health verdict: it is written before
CURRENT moves and cleared, in the same write that queues the verdict's report, after it. A
trial found at start-up therefore means the agent died before the model proved healthy.
Install reports are written to the outbox before they are sent and removed once the cloud
acknowledged them (at-least-once, like candidates); the outbox keeps the newest
`MAX_OUTBOX` reports.

Errors: `ModelStoreError` when state.json or CURRENT cannot be read or written (it names the
file and what to do). This module refuses nothing about bundles themselves; `edge_agent.updater` does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from edge_agent.bundle import RESERVED_FILES, BundleError, load_manifest, sha256_file
from protos import flywheel_pb2 as pb

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
STATE_FILE = "state.json"
STAGING_DIR = "staging"
STATE_FORMAT = "edgeflywheel.models-state/1"
MAX_OUTBOX = 100
RESTARTED_DETAIL = "agent restarted before the model was confirmed healthy"
_VERSION_DIR = re.compile(r"^v([0-9]+)$")


class ModelStoreError(Exception):
    """state.json (or CURRENT) cannot be read or written."""


@dataclass(frozen=True)
class BundleRef:
    """A bundle the device ran: its version and where its files are."""

    version: int
    dir: Path


@dataclass(frozen=True)
class Trial:
    """A model swapped in and waiting for its health verdict, and the one it replaced."""

    version: int
    previous: BundleRef


@dataclass(frozen=True)
class PendingReport:
    """An install report in the outbox, not yet acknowledged by the cloud."""

    id: int
    report: pb.InstallReport


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a reader (or a restart) sees the old bytes or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a power cut
        finally:
            os.close(fd)
    except OSError as exc:
        raise ModelStoreError(f"cannot write {path}: {exc.strerror or exc} (is the disk full or read-only?)") from exc


class ModelStore:
    def __init__(self, models_dir: Path):
        """Open (creating) `models_dir` and read its state. Raises ModelStoreError."""
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._state = self._load()

    # ------------------------------------------------------------------ paths and CURRENT

    def bundle_dir(self, version: int) -> Path:
        return self.models_dir / f"v{version}"

    def staging_dir(self, version: int) -> Path:
        return self.models_dir / STAGING_DIR / f"v{version}"

    def _encode_dir(self, path: Path) -> str:
        path = Path(path).resolve()
        return path.name if path.parent == self.models_dir.resolve() else str(path)

    def _decode_dir(self, text: str) -> Path:
        return self.models_dir / text  # an absolute path stays as it is

    def installed_bundle(self) -> Path | None:
        """The bundle directory that CURRENT points at, if any."""
        pointer = self.models_dir / CURRENT_FILE
        if not pointer.is_file():
            return None
        target = self._decode_dir(pointer.read_text().strip())
        return target if target.is_dir() else None

    def point_current(self, bundle_dir: Path) -> None:
        _write_atomically(self.models_dir / CURRENT_FILE, self._encode_dir(bundle_dir).encode())

    # ------------------------------------------------------------------ state

    def _load(self) -> dict:
        path = self.models_dir / STATE_FILE
        empty = {"format": STATE_FORMAT, "trial": None, "previous": None, "failed": {}, "revoked": {},
                 "outbox": [], "next_report_id": 1}
        try:
            state = json.loads(path.read_bytes())
        except FileNotFoundError:
            return empty
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"cannot read {path}: {exc}. It records revoked and failed model versions, so the "
                                  "agent does not guess: restore it, or delete it to forget them") from exc
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ModelStoreError(f"{path} is not a {STATE_FORMAT} file; delete it to start afresh")
        return {**empty, **state}

    def _save(self) -> None:
        _write_atomically(self.models_dir / STATE_FILE, json.dumps(self._state, indent=1, sort_keys=True).encode())

    def _ref(self, d: dict | None) -> BundleRef | None:
        return BundleRef(int(d["version"]), self._decode_dir(d["dir"])) if d else None

    def _ref_dict(self, ref: BundleRef | None) -> dict | None:
        return {"version": ref.version, "dir": self._encode_dir(ref.dir)} if ref else None

    @property
    def trial(self) -> Trial | None:
        with self._lock:
            t = self._state["trial"]
            return Trial(int(t["version"]), self._ref(t["previous"])) if t else None

    @property
    def previous(self) -> BundleRef | None:
        """The bundle that ran before the current one (its directory may be gone)."""
        with self._lock:
            return self._ref(self._state["previous"])

    @property
    def failed(self) -> dict[int, str]:
        with self._lock:
            return {int(v): reason for v, reason in self._state["failed"].items()}

    @property
    def revoked(self) -> dict[int, str]:
        with self._lock:
            return {int(v): reason for v, reason in self._state["revoked"].items()}

    def excluded(self, version: int) -> str:
        """Why `version` must not run here ("" when it may): revoked, or failed on this device."""
        with self._lock:
            if str(version) in self._state["revoked"]:
                return f"v{version} was revoked ({self._state['revoked'][str(version)]})"
            if str(version) in self._state["failed"]:
                return f"v{version} failed on this device ({self._state['failed'][str(version)]})"
        return ""

    def mark_failed(self, version: int, reason: str) -> None:
        with self._lock:
            self._state["failed"].setdefault(str(version), reason[:500])
            self._save()

    def mark_revoked(self, version: int, reason: str) -> None:
        with self._lock:
            self._state["revoked"].setdefault(str(version), reason[:500])
            self._save()

    def set_previous(self, ref: BundleRef | None) -> None:
        with self._lock:
            self._state["previous"] = self._ref_dict(ref)
            self._save()

    def begin_trial(self, trial: Trial) -> None:
        """Written before CURRENT moves to the trial's bundle."""
        with self._lock:
            self._state["trial"] = {"version": trial.version, "previous": self._ref_dict(trial.previous)}
            self._save()

    def finish_trial(self, report: pb.InstallReport, *, failed_reason: str = "") -> PendingReport:
        """End the trial in one write with its verdict's report queued: healthy (the trial's
        previous bundle becomes the kept previous one) or, with `failed_reason`, failed."""
        with self._lock:
            trial = self._state["trial"]
            if trial is not None:
                if failed_reason:
                    self._state["failed"].setdefault(str(trial["version"]), failed_reason[:500])
                else:
                    self._state["previous"] = trial["previous"]
            self._state["trial"] = None
            return self._queue(report)

    def recover_trial(self, device_id: str) -> Trial | None:
        """At start-up, before a model is chosen: a trial still recorded means the agent died
        between a swap and its health verdict. Point CURRENT back at the trial's previous
        bundle, mark the trial's version failed and queue a ROLLED_BACK report for it.
        Returns the trial, if there was one."""
        trial = self.trial
        if trial is None:
            return None
        log.error("model v%d was still on trial when the agent stopped; rolling back to v%d", trial.version,
                  trial.previous.version)
        if trial.previous.dir.is_dir():
            self.point_current(trial.previous.dir)
        self.finish_trial(pb.InstallReport(device_id=device_id, version=trial.version,
                                           status=pb.INSTALL_STATUS_ROLLED_BACK, detail=RESTARTED_DETAIL,
                                           health=pb.ModelHealth(previous_version=trial.previous.version)),
                          failed_reason=RESTARTED_DETAIL)
        return trial

    # ------------------------------------------------------------------ outbox

    def queue_report(self, report: pb.InstallReport) -> PendingReport:
        with self._lock:
            return self._queue(report)

    def _queue(self, report: pb.InstallReport) -> PendingReport:
        entry_id = int(self._state["next_report_id"])
        self._state["next_report_id"] = entry_id + 1
        outbox = self._state["outbox"]
        outbox.append({"id": entry_id, "report": json_format.MessageToDict(report)})
        if len(outbox) > MAX_OUTBOX:
            log.warning("install report outbox is full; dropping the oldest of %d reports", len(outbox))
            del outbox[: len(outbox) - MAX_OUTBOX]
        self._save()
        return PendingReport(entry_id, report)

    def pending_reports(self) -> list[PendingReport]:
        """Reports not yet acknowledged, oldest first."""
        with self._lock:
            return [PendingReport(int(e["id"]), json_format.ParseDict(e["report"], pb.InstallReport(),
                                                                      ignore_unknown_fields=True))
                    for e in self._state["outbox"]]

    def ack_report(self, entry_id: int) -> None:
        with self._lock:
            self._state["outbox"] = [e for e in self._state["outbox"] if e["id"] != entry_id]
            self._save()

    # ------------------------------------------------------------------ files

    def held_files(self, bundle_dirs: list[Path]) -> dict[tuple[str, int], Path]:
        """(sha256, size) -> a file of `bundle_dirs` or of the kept previous bundle, as their
        manifests list them: where an update may copy a file from instead of fetching it (the
        caller checks the copy's sha256)."""
        previous = self.previous
        dirs = [*bundle_dirs, *([previous.dir] if previous is not None and previous.dir.is_dir() else [])]
        held: dict[tuple[str, int], Path] = {}
        for bundle_dir in dirs:
            try:
                listed = dict(load_manifest(bundle_dir).files)
            except BundleError:
                continue
            for rel in RESERVED_FILES:  # never listed in a manifest; small, so hashed here
                if (bundle_dir / rel).is_file():
                    listed[rel] = sha256_file(bundle_dir / rel)
            for rel, sha in listed.items():
                path = bundle_dir / rel
                if path.is_file():
                    held.setdefault((sha, path.stat().st_size), path)
        return held

    # ------------------------------------------------------------------ cleanup

    def prune(self, running_version: int) -> None:
        """Delete bundle directories other than the current and the previous one, and staging
        directories that can no longer be resumed (not newer than `running_version`, failed or
        revoked). Never raises: a directory that cannot be deleted is logged and kept."""
        keep = {p.resolve() for p in (self.installed_bundle(), self.previous and self.previous.dir) if p}
        trial = self.trial
        if trial is not None:
            keep |= {self.bundle_dir(trial.version).resolve(), trial.previous.dir.resolve()}
        doomed = [p for p in self.models_dir.iterdir() if _VERSION_DIR.match(p.name) and p.is_dir()
                  and p.resolve() not in keep]
        staging = self.models_dir / STAGING_DIR
        if staging.is_dir():
            doomed += [p for p in staging.iterdir()
                       if not (_VERSION_DIR.match(p.name) and int(p.name[1:]) > running_version
                               and not self.excluded(int(p.name[1:])))]
        for path in doomed:
            try:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                log.info("removed %s", path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc.strerror or exc)


def remove_unlisted(staging: Path, listed: set[str]) -> None:
    """Delete files an earlier attempt left in `staging` that this assignment does not list,
    so that, say, a stale manifest.sig cannot vouch for a bundle that arrived without one."""
    for path in sorted(staging.rglob("*"), reverse=True):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in listed:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
