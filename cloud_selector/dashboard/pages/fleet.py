"""Fleet: every device with when it was last heard from, whether it is online, the model it
runs (and its channel and pin), fps, spool depth, bytes uploaded per day, health; and the
progress of recent rollouts (abort a running one: admin, on the Models page's routes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cloud_selector.dashboard.web import page, releases, render, services

DAYS = 7
RECENT_ROLLOUTS = 10


def fleet_page(request: Request) -> Response:
    from cloud_selector import dashboard_data, rollouts

    catalog = services(request).catalog
    plan = releases(request).plan()
    watchers = {w["device_id"]: w for w in releases(request).watchers()}
    devices = dashboard_data.fleet(catalog, days=DAYS)
    rows = [{"d": d, "channel": watchers.get(d.id, {}).get("channel", "-"), "pin": plan.pins.get(d.id),
             "bytes_total": sum(d.bytes_per_day.values()), "bytes_today": list(d.bytes_per_day.values())[-1]
             if d.bytes_per_day else 0} for d in devices]
    recent = [dashboard_data.rollout_progress(catalog, r["id"]) for r in rollouts.list_rollouts(catalog, RECENT_ROLLOUTS)]
    return render(request, "fleet.html", {"rows": rows, "online": sum(d.online for d in devices),
                                          "rollouts": [r for r in recent if r is not None], "days": DAYS,
                                          "channels": plan.channels})


def routes() -> list:
    return [page("/fleet", fleet_page, nav="Fleet")]
