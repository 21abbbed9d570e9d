"""Scheduled selection: run a round every N new candidates or every T minutes, on one replica.

Every `serve` process may run a scheduler; they coordinate through the catalog. A round starts
only under the catalog lock "scheduled-selection" (a PostgreSQL advisory lock, or a lease row on
SQLite), and the trigger is checked again once the lock is held, because another replica may
have just run one. So with any number of replicas a trigger causes one round, and two rounds
never overlap (each run records when it started and finished and which replica ran it).

Triggers, read from the catalog so that they survive restarts and are shared by replicas:
- `every_n`: at least this many candidates arrived since the last run started;
- `every_s`: this long since the last run started (and at least one new candidate).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.registry import Registry
from cloud_selector.rounds import RoundConfig, RoundResult, run_round

log = logging.getLogger(__name__)

LOCK_NAME = "scheduled-selection"


@dataclass(frozen=True)
class Schedule:
    every_n: int = 0  # 0 = no count trigger
    every_s: float = 0.0  # 0 = no time trigger
    poll_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.every_n > 0 or self.every_s > 0


class SelectionScheduler:
    def __init__(self, catalog: Catalog, blobs: BlobStore, registry: Registry, config: RoundConfig,
                 schedule: Schedule, *, replica: str):
        config.selection_config()  # a bad selection config fails at start, not at the first trigger
        self.catalog, self.blobs, self.registry = catalog, blobs, registry
        self.config, self.schedule, self.replica = config, schedule, replica
        self.runs: list[RoundResult] = []

    def due(self) -> str | None:
        """Which trigger fires now ("count" or "time"), or None."""
        last = self.catalog.latest_selection_run()
        since_ms = last["started_ms"] or last["created_ms"] if last else 0
        new = self.catalog.count_received_since(since_ms)
        if self.schedule.every_n and new >= self.schedule.every_n:
            return "count"
        if self.schedule.every_s and new and now_ms() - since_ms >= self.schedule.every_s * 1000:
            return "time"
        return None

    def run_once(self) -> RoundResult | None:
        """Run a round if one is due and no other replica is running one."""
        if self.due() is None or self.registry.latest() is None:
            return None
        with self.catalog.try_lock(LOCK_NAME) as held:
            if not held:
                return None
            trigger = self.due()  # another replica may have run one while we waited
            if trigger is None:
                return None
            started = now_ms()
            result = run_round(self.catalog, self.blobs, self.registry, self.config)
            self.catalog.finish_selection_run(result.run_id, started_ms=started, replica=self.replica,
                                              trigger=trigger)
        log.info("scheduled selection (%s) on %s: run %d picked %d of %d", trigger, self.replica, result.run_id,
                 len(result.selected), result.pool_size)
        self.runs.append(result)
        return result

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.schedule.poll_s):
            try:
                self.run_once()
            except Exception:  # the top of a service loop: log, and try again at the next poll
                log.exception("scheduled selection failed")
