"""Staged rollouts: a new version reaches a canary share of a channel first, then widens in
steps while devices report healthy, and stops (rolling the touched devices back) when they do not.

    start ──> stage 0: the first stages[0] % of the channel's devices (a stable order per rollout)
                 │  each device: assigned ─> installed ─> healthy | failed | timed_out
                 │  healthy means the device's own check passed (edge_agent/health.py) AND its
                 │  drift against the previous model is within the criteria below
                 v
              every device of the stage decided, abort rule not met ──> next stage ... ──> completed
                 (the channel's version becomes the rollout's)
              failures / decided > max_failure_fraction, once min_devices (or the whole stage)
              decided ──> aborted: the version is revoked (signed "new -> previous"), the channel
                 never moved, so every touched device is sent the previous version back

A device that has not decided `device_timeout_s` after its assignment counts as failed. The
devices of a stage are the first ceil(percent x members) of the channel's members (devices that
watched within `member_window_s`, pins excluded) in the order of sha256(rollout id, device id):
stable across polls and replicas, and unrelated between rollouts. Only devices a stage has
reached are ever assigned, so an abort at the canary touches at most the canary.

`RolloutController.tick()` does one pass over running rollouts under the catalog lock
"rollouts", so replicas of the service can all run the controller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import uuid
from dataclasses import asdict, dataclass

import sqlalchemy as sa

from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.releases import ReleaseError, Releases, channel_name
from cloud_selector.schema import rollout_devices, rollouts

log = logging.getLogger(__name__)

DECIDED_OK = ("healthy",)
DECIDED_BAD = ("failed", "timed_out")
DEFAULT_STAGES = (10, 50, 100)


@dataclass(frozen=True)
class AbortCriteria:
    max_failure_fraction: float = 0.05  # abort when failures / decided exceeds this ...
    min_devices: int = 5  # ... once this many devices (or the whole stage so far) decided
    device_timeout_s: float = 900.0  # no verdict this long after the assignment counts as a failure
    max_confidence_drop: float = 0.25  # mean top-class probability, previous minus new
    max_novelty_rise: float = 0.5  # mean calibrated novelty, new minus previous
    max_latency_ratio: float = 3.0  # new p50 / previous p50
    health_frames: int = 0  # frames devices observe before judging (0 = each device's setting)
    member_window_s: float = 900.0  # devices that watched this recently are the channel's members

    def validate(self) -> None:
        if not 0.0 <= self.max_failure_fraction < 1.0:
            raise ReleaseError("max_failure_fraction must be in [0, 1)")
        if self.min_devices < 1 or self.device_timeout_s <= 0 or self.health_frames < 0:
            raise ReleaseError("min_devices must be >= 1, device_timeout_s > 0 and health_frames >= 0")


def check_stages(stages) -> tuple[int, ...]:
    stages = tuple(int(s) for s in stages)
    if not stages or any(not 0 < s <= 100 for s in stages) or list(stages) != sorted(set(stages)):
        raise ReleaseError(f"stages must be increasing percentages in (0, 100], e.g. 10,50,100 (got {stages})")
    if stages[-1] != 100:
        stages += (100,)
    return stages


def health_verdict(health: dict, criteria: AbortCriteria) -> str:
    """"" when a HEALTHY report's figures are within the criteria, else why not."""
    if not health.get("frames") or not health.get("previous_frames"):
        return ""  # nothing to compare: the device's own check (load, smoke run) passed
    problems = []
    drop = health.get("previous_mean_confidence", 0.0) - health.get("mean_confidence", 0.0)
    if drop > criteria.max_confidence_drop:
        problems.append(f"mean confidence fell by {drop:.2f} (limit {criteria.max_confidence_drop})")
    rise = health.get("mean_novelty", 0.0) - health.get("previous_mean_novelty", 0.0)
    if rise > criteria.max_novelty_rise:
        problems.append(f"mean novelty rose by {rise:.2f} (limit {criteria.max_novelty_rise})")
    before, after = health.get("previous_latency_p50_ms", 0.0), health.get("latency_p50_ms", 0.0)
    if before > 0 and after / before > criteria.max_latency_ratio:
        problems.append(f"p50 latency {after:.1f} ms is {after / before:.1f}x the previous model's")
    return "; ".join(problems)


def start_rollout(releases: Releases, version: int, *, channel: str = "", stages=DEFAULT_STAGES,
                  criteria: AbortCriteria = AbortCriteria(), actor: str = "") -> str:
    """Start rolling `version` out on `channel`; returns the rollout id."""
    channel = channel_name(channel)
    stages = check_stages(stages)
    criteria.validate()
    previous = releases.channel_version(channel) or 0
    if releases.catalog.model(version) is None:
        raise ReleaseError(f"no model version {version} (see `cloud-selector models list`)")
    if version <= previous:
        raise ReleaseError(f"channel {channel} runs v{previous}; a rollout must bring a newer version "
                           "(to go back, use `cloud-selector models rollback`)")
    if running_rollout(releases.catalog, channel) is not None:
        raise ReleaseError(f"a rollout is already running on channel {channel}: abort it first "
                           "(`cloud-selector rollout abort ID`)")
    rollout_id, stamp = str(uuid.uuid4()), now_ms()
    with releases.engine.begin() as conn:
        conn.execute(rollouts.insert().values(
            id=rollout_id, channel=channel, version=version, previous_version=previous, stages=json.dumps(stages),
            stage=0, criteria=json.dumps(asdict(criteria)), state="running", reason="", actor=actor[:128],
            created_ms=stamp, updated_ms=stamp))
    log.info("rollout %s: v%d on channel %s in stages %s", rollout_id[:8], version, channel, stages)
    return rollout_id


def running_rollout(catalog: Catalog, channel: str) -> dict | None:
    with catalog.engine.connect() as conn:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.channel == channel_name(channel),
                                                     rollouts.c.state == "running")).first()
    return _rollout_dict(row) if row else None


def rollout(catalog: Catalog, rollout_id: str) -> dict | None:
    """The rollout with its devices and a count per device status."""
    with catalog.engine.connect() as conn:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).first()
        if row is None:
            return None
        devices = [{**r._asdict(), "health": json.loads(r.health) if r.health else None} for r in conn.execute(
            sa.select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)
            .order_by(rollout_devices.c.stage, rollout_devices.c.device_id))]
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    return {**_rollout_dict(row), "devices": devices, "counts": counts}


def list_rollouts(catalog: Catalog, limit: int = 50) -> list[dict]:
    with catalog.engine.connect() as conn:
        return [_rollout_dict(r) for r in conn.execute(
            sa.select(rollouts).order_by(rollouts.c.created_ms.desc()).limit(limit))]


def abort(releases: Releases, rollout_id: str, reason: str, *, actor: str = "") -> None:
    """Stop a running rollout and send its touched devices back to the previous version."""
    record = rollout(releases.catalog, rollout_id)
    if record is None:
        raise ReleaseError(f"no rollout {rollout_id!r} (see `cloud-selector rollout list`)")
    if record["state"] != "running":
        raise ReleaseError(f"rollout {rollout_id} is {record['state']}, not running")
    if record["previous_version"]:
        releases.revoke(record["version"], record["previous_version"], f"rollout {rollout_id} aborted: {reason}")
    with releases.engine.begin() as conn:
        conn.execute(rollouts.update().where(rollouts.c.id == rollout_id, rollouts.c.state == "running")
                     .values(state="aborted", reason=f"{reason} ({actor})" if actor else reason, updated_ms=now_ms()))
    releases.set_status(record["version"], "rolled_back")
    log.warning("rollout %s of v%d aborted: %s", rollout_id[:8], record["version"], reason)


def record_report(catalog: Catalog, device_id: str, *, rollout_id: str, version: int, status: str, detail: str,
                  health: dict | None) -> None:
    """Fold a device's install report into its rollout row (reports without a rollout id, or for
    another version, are about something else and change nothing here)."""
    if not rollout_id:
        return
    with catalog.engine.begin() as conn:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).first()
        if row is None:
            return
        if version == row.version:
            new_status = {"installed": "installed", "failed": "failed", "rolled_back": "failed"}.get(status)
            if status == "healthy":
                problem = health_verdict(health or {}, AbortCriteria(**json.loads(row.criteria)))
                new_status, detail = ("failed", f"drift: {problem}") if problem else ("healthy", detail)
        elif version == row.previous_version and status in ("installed", "healthy"):
            new_status = "reverted"
        else:
            return
        if new_status is None:
            return
        conn.execute(rollout_devices.update().where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == device_id,
            rollout_devices.c.status.not_in(("healthy", "failed", "timed_out", "reverted"))
            if new_status == "installed" else sa.true())
            .values(status=new_status, detail=detail[:2000], reported_ms=now_ms(),
                    **({"health": json.dumps(health)} if health else {})))


def stage_order(rollout_id: str, device_ids) -> list[str]:
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}\n{d}".encode()).hexdigest())


class RolloutController:
    """Advances running rollouts: assigns the devices of the current stage, times out the
    silent ones, aborts on the criteria, widens, completes."""

    def __init__(self, releases: Releases, *, interval_s: float = 2.0):
        self.releases = releases
        self.catalog = releases.catalog
        self.interval_s = interval_s

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the top of a loop: log, go on (a transient database error)
                log.exception("rollout controller pass failed; retrying in %.0f s", self.interval_s)

    def tick(self) -> None:
        with self.catalog.try_lock("rollouts") as held:
            if not held:
                return
            with self.catalog.engine.connect() as conn:
                ids = [r.id for r in conn.execute(sa.select(rollouts.c.id).where(rollouts.c.state == "running"))]
            for rollout_id in ids:
                self.advance(rollout_id)

    def advance(self, rollout_id: str) -> str:
        """One step of one rollout; returns its state afterwards."""
        record = rollout(self.catalog, rollout_id)
        criteria = AbortCriteria(**record["criteria"])
        self._time_out(record, criteria)
        record = rollout(self.catalog, rollout_id)
        devices = record["devices"]
        bad = [d for d in devices if d["status"] in DECIDED_BAD]
        decided = [d for d in devices if d["status"] in DECIDED_OK + DECIDED_BAD]
        if bad and (len(decided) >= criteria.min_devices or len(decided) == len(devices)) \
                and len(bad) / len(decided) > criteria.max_failure_fraction:
            reasons = "; ".join(f"{d['device_id']}: {d['detail'][:120]}" for d in bad[:3])
            abort(self.releases, rollout_id, f"{len(bad)} of {len(decided)} devices failed ({reasons})",
                  actor="rollout controller")
            return "aborted"
        if len(decided) < len(devices):
            return "running"  # the stage is still deciding
        stages, stage = record["stages"], record["stage"]
        members = self._members(record)
        if not members:
            return "running"  # no devices on the channel yet: wait for them to watch
        wanted = max(1, math.ceil(stages[stage] * len(members) / 100))
        if len(devices) < wanted:
            self._assign(record, members, wanted, stage)
            return "running"
        if stage + 1 < len(stages):
            with self.catalog.engine.begin() as conn:
                conn.execute(rollouts.update().where(rollouts.c.id == rollout_id)
                             .values(stage=stage + 1, updated_ms=now_ms()))
            log.info("rollout %s: stage %d done (%d devices healthy), widening to %d%%", rollout_id[:8], stage,
                     len(decided), stages[stage + 1])
            return self.advance(rollout_id)
        self.releases.release(record["version"], channel=record["channel"], action="rollout",
                              actor=record["actor"], detail=f"rollout {rollout_id} completed")
        with self.catalog.engine.begin() as conn:
            conn.execute(rollouts.update().where(rollouts.c.id == rollout_id)
                         .values(state="completed", updated_ms=now_ms()))
        log.info("rollout %s: v%d completed on channel %s", rollout_id[:8], record["version"], record["channel"])
        return "completed"

    def _members(self, record: dict) -> list[str]:
        criteria = AbortCriteria(**record["criteria"])
        pins = self.releases.pins()
        seen = self.releases.watchers(record["channel"], seen_within_s=criteria.member_window_s)
        assigned = {d["device_id"] for d in record["devices"]}
        # Devices already in the rollout stay members even if they went quiet since.
        return stage_order(record["id"], {w["device_id"] for w in seen if w["device_id"] not in pins} | assigned)

    def _assign(self, record: dict, members: list[str], wanted: int, stage: int) -> None:
        assigned = {d["device_id"] for d in record["devices"]}
        fresh = [d for d in members[:wanted] if d not in assigned]
        stamp = now_ms()
        with self.catalog.engine.begin() as conn:
            conn.execute(rollout_devices.insert(), [
                {"rollout_id": record["id"], "device_id": d, "stage": stage, "status": "assigned", "detail": "",
                 "health": None, "assigned_ms": stamp, "reported_ms": None} for d in fresh])
        log.info("rollout %s: stage %d assigns %d devices (%d of %d members)", record["id"][:8], stage, len(fresh),
                 wanted, len(members))

    def _time_out(self, record: dict, criteria: AbortCriteria) -> None:
        deadline = now_ms() - int(criteria.device_timeout_s * 1000)
        with self.catalog.engine.begin() as conn:
            conn.execute(rollout_devices.update().where(
                rollout_devices.c.rollout_id == record["id"], rollout_devices.c.assigned_ms < deadline,
                rollout_devices.c.status.in_(("assigned", "installed")))
                .values(status="timed_out", detail=f"no verdict within {criteria.device_timeout_s:.0f} s",
                        reported_ms=now_ms()))


def _rollout_dict(row) -> dict:
    d = row._asdict()
    d["stages"] = json.loads(d["stages"])
    d["criteria"] = json.loads(d["criteria"])
    return d
