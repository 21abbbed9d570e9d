"""The overview, fleet and rollout pages' figures (import from `cloud_selector.dashboard_data`,
the public face).

Days are UTC days ('YYYY-MM-DD'). What each day's figure counts:

- frames_scored, frames_kept, bytes_uploaded: what devices report (their heartbeat counters are
  cumulative; `fleet_daily` keeps each device's last report of a day, and a day's figure is the
  difference from the device's previous report, whenever that was). A counter that went down
  means the agent restarted: the new value counts in full, as does a device's first report;
- uploaded: candidates received from devices (folder imports are not uploads);
- duplicates, selected: found and picked by the selection runs of that day;
- labeled: labels given that day (label events; a relabel counts again).

A model version's `upload_bytes` is the JPEG bytes of device candidates received up to its
creation: what the fleet had sent when it was trained, next to its held-out accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import sqlalchemy as sa

from cloud_selector.catalog import LABELED, Catalog, now_ms as clock_ms, utc_day
from cloud_selector.labels import IMPORT_DEVICE
from cloud_selector.schema import (
    candidates, devices, fleet_daily, label_events, model_lineage, models, rollout_devices, rollouts, selection_runs,
)

DAY_MS = 86_400_000
ONLINE_WITHIN_MS = 120_000
COUNTERS = ("frames_seen", "frames_kept", "candidates_acked", "bytes_uploaded")


@dataclass(frozen=True)
class DayStats:
    day: str
    frames_scored: int
    frames_kept: int
    uploaded: int
    duplicates: int
    selected: int
    labeled: int
    bytes_uploaded: int


@dataclass(frozen=True)
class ModelStats:
    version: int
    name: str
    created_ms: int
    published: bool
    status: str  # lineage: candidate | refused | released | rolled_back ("" without lineage)
    trainer_mode: str
    accuracy: float | None  # on the held-out set, when it was evaluated
    label_count: int | None  # labels it was trained on, when its lineage was recorded
    upload_bytes: int  # module docstring


@dataclass(frozen=True)
class RolloutProgress:
    id: str
    channel: str
    version: int
    previous_version: int
    state: str  # running | completed | aborted
    stage: int  # index into stages
    stages: list[int]  # cumulative percentages
    reason: str
    created_ms: int
    updated_ms: int
    counts: dict[str, int]  # devices per status: assigned, installed, healthy, failed, timed_out, reverted

    @property
    def devices(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Overview:
    now_ms: int
    days: list[DayStats]  # oldest first, the last is today
    models: list[ModelStats]  # by version
    rollout: RolloutProgress | None  # the running one (newest), else the newest
    devices_online: int  # heard from within ONLINE_WITHIN_MS
    devices_total: int
    candidates_by_state: dict[str, int]


@dataclass(frozen=True)
class DeviceHealth:
    """The heartbeat's typed health fields (kept in the device's status JSON by the Fleet service)."""

    agent_version: str = ""
    inference_p50_ms: float = 0.0
    inference_p99_ms: float = 0.0
    candidates_evicted: int = 0
    candidates_rejected: int = 0
    bytes_uploaded: int = 0
    spool_cap_bytes: int = 0
    clock_skew_ms: int | None = None


_HEALTH_KEYS = tuple(f.name for f in fields(DeviceHealth))


@dataclass(frozen=True)
class DeviceRollout:
    """The device's part in the newest rollout that reached it."""

    rollout_id: str
    version: int
    rollout_state: str
    stage: int
    status: str  # assigned | installed | healthy | failed | timed_out | reverted
    detail: str
    assigned_ms: int
    reported_ms: int | None


@dataclass(frozen=True)
class DeviceRow:
    id: str
    last_seen_ms: int
    online: bool
    model_version: int
    fps: float
    frames_seen: int
    frames_kept: int
    candidates_acked: int
    spool_depth: int
    spool_bytes: int
    status: dict  # the device's free-form status (health fields moved to `health`)
    health: DeviceHealth
    bytes_per_day: dict[str, int]  # the last `days` UTC days, oldest first (0 without reports)
    rollout: DeviceRollout | None


def _day_of(column) -> sa.ColumnElement:
    # The divisor inline: PostgreSQL must see the same expression in SELECT and GROUP BY.
    return (column // sa.literal_column(str(DAY_MS), sa.BigInteger)).label("day_index")


def _window(now: int, days: int) -> list[str]:
    today = now // DAY_MS
    return [utc_day((today - i) * DAY_MS) for i in reversed(range(days))]


def overview(catalog: Catalog, *, days: int = 14, now_ms: int | None = None) -> Overview:
    """The last `days` UTC days up to `now_ms` (default now), the model versions, the rollout
    and the fleet's size (module docstring)."""
    if days < 1:
        raise ValueError(f"days: at least 1 (got {days})")
    now = clock_ms() if now_ms is None else now_ms
    names = _window(now, days)
    start = (now // DAY_MS - days + 1) * DAY_MS
    per_day: dict[str, dict[str, int]] = {day: {} for day in names}

    def add(figure: str, rows) -> None:
        for day_index, value in rows:
            day = utc_day(int(day_index) * DAY_MS)
            if day in per_day:
                per_day[day][figure] = int(value or 0)

    with catalog.engine.connect() as conn:
        day = _day_of(candidates.c.received_ms)
        add("uploaded", conn.execute(sa.select(day, sa.func.count()).where(
            candidates.c.received_ms >= start, candidates.c.device_id != IMPORT_DEVICE).group_by(day)))
        day = _day_of(selection_runs.c.created_ms)
        for figure in ("duplicates", "selected"):
            add(figure, conn.execute(sa.select(day, sa.func.sum(selection_runs.c[figure]))
                                     .where(selection_runs.c.created_ms >= start).group_by(day)))
        day = _day_of(label_events.c.at_ms)
        add("labeled", conn.execute(sa.select(day, sa.func.count()).where(
            label_events.c.at_ms >= start, label_events.c.state == LABELED).group_by(day)))
        for (_, day_name), delta in _deltas(conn, names[0]).items():
            if day_name in per_day:
                for name in ("frames_seen", "frames_kept", "bytes_uploaded"):
                    per_day[day_name][name] = per_day[day_name].get(name, 0) + delta[name]
        online = conn.execute(sa.select(sa.func.count()).where(devices.c.last_seen_ms >= now - ONLINE_WITHIN_MS)
                              ).scalar_one()
        total = conn.execute(sa.select(sa.func.count()).select_from(devices)).scalar_one()
        by_state = dict(conn.execute(sa.select(candidates.c.state, sa.func.count()).group_by(candidates.c.state)).all())
        model_stats = _models(conn)
    stats = [DayStats(day=d, frames_scored=v.get("frames_seen", 0), frames_kept=v.get("frames_kept", 0),
                      uploaded=v.get("uploaded", 0), duplicates=v.get("duplicates", 0), selected=v.get("selected", 0),
                      labeled=v.get("labeled", 0), bytes_uploaded=v.get("bytes_uploaded", 0))
             for d, v in per_day.items()]
    return Overview(now_ms=now, days=stats, models=model_stats, rollout=rollout_progress(catalog),
                    devices_online=online, devices_total=total, candidates_by_state=by_state)


def _deltas(conn: sa.Connection, first_day: str) -> dict[tuple[str, str], dict[str, int]]:
    """{(device, day): counter increments} for days from `first_day` (module docstring): the
    rows of those days, each after the device's previous row (read too, from before them)."""
    previous = (sa.select(fleet_daily.c.device_id, sa.func.max(fleet_daily.c.day).label("day"))
                .where(fleet_daily.c.day < first_day).group_by(fleet_daily.c.device_id).subquery())
    before = sa.select(fleet_daily).join(previous, sa.and_(fleet_daily.c.device_id == previous.c.device_id,
                                                           fleet_daily.c.day == previous.c.day))
    rows = sorted([*conn.execute(before), *conn.execute(sa.select(fleet_daily).where(fleet_daily.c.day >= first_day))],
                  key=lambda r: (r.device_id, r.day))
    return {key: value for key, value in daily_deltas(rows).items() if key[1] >= first_day}


def daily_deltas(rows) -> dict[tuple[str, str], dict[str, int]]:
    """Per (device, day), how much each counter grew since the device's previous row; `rows`
    sorted by device, then day. A first row, or a counter that went down (a restart), counts
    its value in full."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    last: dict[str, object] = {}
    for r in rows:
        before = last.get(r.device_id)
        out[(r.device_id, r.day)] = {
            name: getattr(r, name) - getattr(before, name)
            if before is not None and getattr(r, name) >= getattr(before, name) else getattr(r, name)
            for name in COUNTERS}
        last[r.device_id] = r
    return out


def _models(conn: sa.Connection) -> list[ModelStats]:
    rows = conn.execute(sa.select(models.c.version, models.c.name, models.c.created_ms, models.c.published,
                                  model_lineage.c.status, model_lineage.c.trainer_mode, model_lineage.c.label_count,
                                  model_lineage.c.evaluation)
                        .outerjoin(model_lineage, model_lineage.c.version == models.c.version)
                        .order_by(models.c.version)).all()
    # Bytes between consecutive creation times, summed up: every candidate is read once.
    sent, running, previous = {}, 0, None
    for stamp in sorted({r.created_ms for r in rows}):
        query = sa.select(sa.func.coalesce(sa.func.sum(candidates.c.jpeg_bytes), 0)).where(
            candidates.c.received_ms <= stamp, candidates.c.device_id != IMPORT_DEVICE)
        if previous is not None:
            query = query.where(candidates.c.received_ms > previous)
        running += int(conn.execute(query).scalar_one())
        sent[stamp], previous = running, stamp
    return [ModelStats(
        version=r.version, name=r.name, created_ms=r.created_ms, published=bool(r.published), status=r.status or "",
        trainer_mode=r.trainer_mode or "", accuracy=json.loads(r.evaluation).get("accuracy") if r.evaluation else None,
        label_count=r.label_count, upload_bytes=sent[r.created_ms]) for r in rows]


def rollout_progress(catalog: Catalog, rollout_id: str | None = None) -> RolloutProgress | None:
    """A rollout's stage and devices per status: `rollout_id`'s, else the newest running one,
    else the newest; None when there is none."""
    with catalog.engine.connect() as conn:
        query = sa.select(rollouts)
        if rollout_id is not None:
            query = query.where(rollouts.c.id == rollout_id)
        row = conn.execute(query.order_by((rollouts.c.state == "running").desc(), rollouts.c.created_ms.desc(),
                                          rollouts.c.id).limit(1)).first()
        if row is None:
            return None
        counts = dict(conn.execute(sa.select(rollout_devices.c.status, sa.func.count())
                                   .where(rollout_devices.c.rollout_id == row.id)
                                   .group_by(rollout_devices.c.status).order_by(rollout_devices.c.status)).all())
    return RolloutProgress(id=row.id, channel=row.channel, version=row.version, previous_version=row.previous_version,
                           state=row.state, stage=row.stage, stages=json.loads(row.stages), reason=row.reason,
                           created_ms=row.created_ms, updated_ms=row.updated_ms, counts=counts)


def fleet(catalog: Catalog, *, days: int = 7, now_ms: int | None = None) -> list[DeviceRow]:
    """Every device that ever sent a heartbeat, by id, with its bytes per day over the last
    `days` UTC days and its part in the newest rollout that reached it."""
    if days < 1:
        raise ValueError(f"days: at least 1 (got {days})")
    now = clock_ms() if now_ms is None else now_ms
    names = _window(now, days)
    with catalog.engine.connect() as conn:
        deltas = _deltas(conn, names[0])
        newest = (sa.select(rollout_devices.c.device_id, sa.func.max(rollout_devices.c.assigned_ms).label("at"))
                  .group_by(rollout_devices.c.device_id).subquery())
        memberships = {r.device_id: DeviceRollout(
            rollout_id=r.rollout_id, version=r.version, rollout_state=r.state, stage=r.stage, status=r.status,
            detail=r.detail, assigned_ms=r.assigned_ms, reported_ms=r.reported_ms) for r in conn.execute(
            sa.select(rollout_devices, rollouts.c.version, rollouts.c.state)
            .join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
            .join(newest, sa.and_(newest.c.device_id == rollout_devices.c.device_id,
                                  newest.c.at == rollout_devices.c.assigned_ms))
            .order_by(rollout_devices.c.assigned_ms, rollouts.c.created_ms))}
        rows = conn.execute(sa.select(devices).order_by(devices.c.id)).all()
    out = []
    for r in rows:
        status = json.loads(r.status)
        health = DeviceHealth(**{k: status.pop(k) for k in _HEALTH_KEYS if k in status})
        out.append(DeviceRow(
            id=r.id, last_seen_ms=r.last_seen_ms, online=r.last_seen_ms >= now - ONLINE_WITHIN_MS,
            model_version=r.model_version, fps=r.fps, frames_seen=r.frames_seen, frames_kept=r.frames_kept,
            candidates_acked=r.candidates_acked, spool_depth=r.spool_depth, spool_bytes=r.spool_bytes, status=status,
            health=health, bytes_per_day={d: deltas.get((r.id, d), {}).get("bytes_uploaded", 0) for d in names},
            rollout=memberships.get(r.id)))
    return out
