"""Which model each device should run: release channels, pins, revocations, lineage, holdout.

A device's target version, in order of precedence:

1. its pin (`cloud-selector models pin DEVICE VERSION`);
2. a running staged rollout that picked it (cloud_selector/rollouts.py): the rollout's version;
3. its channel's released version (`models promote`, a completed rollout, `models rollback`);
   a channel that never had a release follows the `default` channel.

Devices never install a version older than the one they run unless a signed revocation of
their version says so (edge_agent/signing.py). Whoever moves a channel or a device back
(rollback, an aborted rollout, a pin to an older version) therefore stores a signed revocation
"R -> T" here, and the Models service sends it with the assignment for T to devices on R.

`plan()` reads everything the targets depend on in one go; the Models service shares one plan
between all its Watch streams for a poll interval, so a fleet of watchers costs a few queries
a second, not a few per device.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import sqlalchemy as sa

from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.evaluation import holdout_digest
from cloud_selector.schema import (
    channels,
    device_pins,
    holdout,
    model_labels,
    model_lineage,
    models,
    releases,
    revocations,
    rollout_devices,
    rollouts,
    watchers,
)
from edge_agent.signing import Revocation, SigningKey, sign_revocation

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "default"
LINEAGE_STATES = ("candidate", "refused", "released", "rolled_back")
MAX_CHANNEL_CHARS = 64


def label_set_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """Names a label set in manifests and lineage: evaluation.holdout_digest of its (id, label) pairs."""
    pairs = list(pairs)
    return holdout_digest([cid for cid, _ in pairs], [label for _, label in pairs])


class ReleaseError(ValueError):
    """A release, rollback or pin that cannot be done as asked (the message says why)."""


def channel_name(name: str | None) -> str:
    """The stored name of a channel ("" means the default); raises ReleaseError when unusable."""
    name = (name or "").strip() or DEFAULT_CHANNEL
    if len(name) > MAX_CHANNEL_CHARS or not name.isprintable():
        raise ReleaseError(f"a channel name is at most {MAX_CHANNEL_CHARS} printable characters (got {name[:40]!r})")
    return name


@dataclass(frozen=True)
class Target:
    version: int
    rollout_id: str = ""
    health_frames: int = 0


@dataclass(frozen=True)
class Plan:
    """Everything targets depend on, read at one moment."""

    channels: dict[str, int] = field(default_factory=dict)
    pins: dict[str, int] = field(default_factory=dict)
    # device -> (rollout id, version, health frames) for running rollouts
    rollout_members: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # device -> the version it last said it runs

    def target_for(self, device_id: str, channel: str) -> Target | None:
        if device_id in self.pins:
            return Target(self.pins[device_id])
        if device_id in self.rollout_members:
            rollout_id, version, health_frames = self.rollout_members[device_id]
            return Target(version, rollout_id, health_frames)
        version = self.channels.get(channel, self.channels.get(DEFAULT_CHANNEL))
        return Target(version) if version else None


class Releases:
    def __init__(self, catalog: Catalog, signing_key: Callable[[], SigningKey | None] = lambda: None):
        """`signing_key` gives the key revocations are signed with (the registry's), or None:
        then revocations are stored unsigned, which only devices that trust no key accept."""
        self.catalog = catalog
        self._signing_key = signing_key

    @property
    def engine(self) -> sa.Engine:
        return self.catalog.engine

    # ------------------------------------------------------------------ the plan

    def plan(self) -> Plan:
        with self.engine.connect() as conn:
            chans = {r.name: r.version for r in conn.execute(sa.select(channels))}
            pins = {r.device_id: r.version for r in conn.execute(sa.select(device_pins))}
            members = {}
            running = conn.execute(
                sa.select(rollout_devices.c.device_id, rollouts.c.id, rollouts.c.version, rollouts.c.criteria)
                .join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
                .where(rollouts.c.state == "running"))
            for r in running:
                members[r.device_id] = (r.id, r.version, int(json.loads(r.criteria).get("health_frames", 0)))
            versions = {r.device_id: r.version for r in conn.execute(sa.select(watchers.c.device_id, watchers.c.version))}
        return Plan(chans, pins, members, versions)

    def target_for(self, device_id: str, channel: str = DEFAULT_CHANNEL) -> Target | None:
        return self.plan().target_for(device_id, channel_name(channel))

    # ------------------------------------------------------------------ channels

    def channel_version(self, channel: str = DEFAULT_CHANNEL) -> int | None:
        chans = self.plan().channels
        return chans.get(channel_name(channel), chans.get(DEFAULT_CHANNEL))

    def release(self, version: int, *, channel: str = DEFAULT_CHANNEL, action: str = "promote", actor: str = "",
                detail: str = "") -> int:
        """Make `version` the channel's version; returns the previous one (0 = none)."""
        channel = channel_name(channel)
        self._require_model(version)
        stamp = now_ms()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(channels.c.version).where(channels.c.name == channel)).first()
            previous = row.version if row else 0
            if row:
                conn.execute(channels.update().where(channels.c.name == channel)
                             .values(version=version, updated_ms=stamp))
            else:
                conn.execute(channels.insert().values(name=channel, version=version, updated_ms=stamp))
            conn.execute(releases.insert().values(channel=channel, version=version, previous_version=previous,
                                                  action=action, actor=actor[:128], detail=detail, at_ms=stamp))
            self._upsert_lineage(conn, version, status="released", released_by=actor[:128], released_ms=stamp)
        log.info("channel %s: v%d -> v%d (%s by %s)", channel, previous, version, action, actor or "?")
        return previous

    def history(self, channel: str | None = None) -> list[dict]:
        query = sa.select(releases).order_by(releases.c.id)
        if channel is not None:
            query = query.where(releases.c.channel == channel_name(channel))
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(query)]

    def rollback(self, *, channel: str = DEFAULT_CHANNEL, to_version: int | None = None, actor: str = "",
                 reason: str = "") -> tuple[int, int]:
        """Move the channel back to `to_version` (default: the version it ran before the
        current one) and revoke the current one; returns (from, to)."""
        channel = channel_name(channel)
        current = self.channel_version(channel)
        if not current:
            raise ReleaseError(f"channel {channel!r} has no released version to roll back")
        if to_version is None:
            earlier = [r["previous_version"] for r in self.history(channel) if r["version"] == current]
            # the latest release it replaced that is older (a rollback's "previous" is newer)
            to_version = next((v for v in reversed(earlier) if 0 < v < current), 0)
            if not to_version:
                raise ReleaseError(f"channel {channel!r} ran nothing before v{current}; name a version with --to")
        if to_version >= current:
            raise ReleaseError(f"roll back to an older version than v{current} (got v{to_version})")
        self.revoke(current, to_version, reason or f"rolled back by {actor or 'an operator'}")
        self.release(to_version, channel=channel, action="rollback", actor=actor, detail=reason)
        self.set_status(current, "rolled_back")
        return current, to_version

    # ------------------------------------------------------------------ pins

    def pin(self, device_id: str, version: int, *, actor: str = "") -> None:
        """Pin a device to a version; pinning it below what it runs revokes that version for it."""
        self._require_model(version)
        running = self.watcher(device_id)
        if running and running["version"] > version:
            self.revoke(running["version"], version, f"device {device_id} pinned to v{version}")
        with self.engine.begin() as conn:
            conn.execute(device_pins.delete().where(device_pins.c.device_id == device_id))
            conn.execute(device_pins.insert().values(device_id=device_id, version=version, actor=actor[:128],
                                                     at_ms=now_ms()))

    def unpin(self, device_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(device_pins.delete().where(device_pins.c.device_id == device_id)).rowcount > 0

    def pins(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.device_id: r.version for r in conn.execute(sa.select(device_pins))}

    # ------------------------------------------------------------------ revocations

    def revoke(self, revoked: int, target: int, reason: str) -> None:
        """Store a signed revocation "revoked -> target" (kept once per pair)."""
        if self.revocation(revoked, target) is not None:
            return
        name = (self.catalog.model(revoked) or {}).get("name", "")
        document = Revocation(name, revoked, target, datetime.now(timezone.utc).isoformat(timespec="seconds"), reason)
        key = self._signing_key()
        data, signature = sign_revocation(document, key) if key else (document.to_bytes(), b"")
        if not key:
            log.warning("revocation v%d -> v%d is unsigned (no signing key): devices that trust keys refuse it",
                        revoked, target)
        with self.engine.begin() as conn:
            conn.execute(revocations.insert().values(revoked_version=revoked, target_version=target, document=data,
                                                     signature=signature, created_ms=now_ms()))

    def revocation(self, revoked: int, target: int) -> tuple[bytes, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(revocations.c.document, revocations.c.signature).where(
                revocations.c.revoked_version == revoked, revocations.c.target_version == target)).first()
        return (bytes(row.document), bytes(row.signature)) if row else None

    # ------------------------------------------------------------------ watchers

    def saw(self, device_id: str, *, channel: str | None = None, version: int | None = None) -> None:
        """Record a device's channel and/or running version as the Models service sees them."""
        stamp = now_ms()
        values = {"seen_ms": stamp}
        if channel is not None:
            values["channel"] = channel_name(channel)
        if version is not None:
            values["version"] = int(version)
        with self.engine.begin() as conn:
            if conn.execute(watchers.update().where(watchers.c.device_id == device_id).values(**values)).rowcount:
                return
            conn.execute(self.catalog._insert(watchers).values(
                device_id=device_id, channel=values.get("channel", DEFAULT_CHANNEL), version=values.get("version", 0),
                seen_ms=stamp).on_conflict_do_nothing(index_elements=[watchers.c.device_id]))

    def watcher(self, device_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(watchers).where(watchers.c.device_id == device_id)).first()
        return row._asdict() if row else None

    def watchers(self, channel: str | None = None, *, seen_within_s: float | None = None) -> list[dict]:
        query = sa.select(watchers).order_by(watchers.c.device_id)
        if channel is not None:
            query = query.where(watchers.c.channel == channel_name(channel))
        if seen_within_s is not None:
            query = query.where(watchers.c.seen_ms >= now_ms() - int(seen_within_s * 1000))
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(query)]

    # ------------------------------------------------------------------ lineage

    def record_lineage(self, version: int, *, trainer_mode: str, labels: Iterable[tuple[str, str]],
                       status: str = "candidate") -> None:
        pairs = sorted(set(labels))
        with self.engine.begin() as conn:
            self._upsert_lineage(conn, version, trainer_mode=trainer_mode[:16], label_count=len(pairs),
                                 label_sha256=label_set_digest(pairs), status=status)
            conn.execute(model_labels.delete().where(model_labels.c.version == version))
            if pairs:
                conn.execute(model_labels.insert(), [{"version": version, "candidate_id": cid, "label": label}
                                                     for cid, label in pairs])

    def record_evaluation(self, version: int, evaluation: dict | None, gate: dict | None, status: str) -> None:
        with self.engine.begin() as conn:
            self._upsert_lineage(conn, version, evaluation=json.dumps(evaluation) if evaluation else None,
                                 gate=json.dumps(gate) if gate else None, status=status)

    def set_status(self, version: int, status: str) -> None:
        with self.engine.begin() as conn:
            self._upsert_lineage(conn, version, status=status)

    def lineage(self, version: int) -> dict | None:
        """The model row with its lineage: parent, trainer mode, labels, evaluation, gate, status."""
        record = self.catalog.model(version)
        if record is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(model_lineage).where(model_lineage.c.version == version)).first()
        extra = row._asdict() if row else {"trainer_mode": record["manifest"].get("trainer", {}).get("mode", ""),
                                           "label_count": 0, "label_sha256": "", "status": "candidate",
                                           "evaluation": None, "gate": None, "released_by": None, "released_ms": None}
        for key in ("evaluation", "gate"):
            extra[key] = json.loads(extra[key]) if isinstance(extra[key], str) else extra[key]
        return {**record, **{k: v for k, v in extra.items() if k != "version"}}

    def label_ids(self, version: int) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(model_labels.c.candidate_id, model_labels.c.label)
                                .where(model_labels.c.version == version).order_by(model_labels.c.candidate_id))
            return [(r.candidate_id, r.label) for r in rows]

    def _upsert_lineage(self, conn: sa.Connection, version: int, **values) -> None:
        if "status" in values and values["status"] not in LINEAGE_STATES:
            raise ValueError(f"lineage status must be one of {LINEAGE_STATES}")
        if conn.execute(model_lineage.update().where(model_lineage.c.version == version).values(**values)).rowcount:
            return
        conn.execute(model_lineage.insert().values(**{"version": version, "trainer_mode": "", "label_count": 0,
                                                      "label_sha256": "", "status": "candidate", **values}))

    def _require_model(self, version: int) -> None:
        with self.engine.connect() as conn:
            if conn.execute(sa.select(models.c.version).where(models.c.version == version)).first() is None:
                raise ReleaseError(f"no model version {version} (see `cloud-selector models list`)")

    # ------------------------------------------------------------------ holdout

    def holdout(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(holdout.c.candidate_id, holdout.c.label).order_by(holdout.c.candidate_id))
            return [(r.candidate_id, r.label) for r in rows]

    def set_holdout(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Replace the held-out set (a reset); returns its size."""
        rows = [{"candidate_id": cid, "label": label, "added_ms": now_ms()} for cid, label in sorted(set(pairs))]
        with self.engine.begin() as conn:
            conn.execute(holdout.delete())
            if rows:
                conn.execute(holdout.insert(), rows)
        return len(rows)
