"""Overview: the flywheel in numbers. Per day: frames scored on the devices, candidates
uploaded, near-duplicates dropped, picks selected, labels given; each model version's held-out
accuracy against the labels it cost and the bytes the fleet had uploaded; the current rollout;
devices online."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cloud_selector.dashboard.charts import Point, bar_chart, line_chart
from cloud_selector.dashboard.web import page, render, services

DAYS = 14
# (DayStats field, chart title, what an all-zero chart means)
DAY_CHARTS = (
    ("frames_scored", "Frames scored on devices", "No device reported scored frames (heartbeats carry them)."),
    ("uploaded", "Candidates uploaded", "No device uploaded candidates."),
    ("duplicates", "Near-duplicates dropped", "No selection run found near-duplicates."),
    ("selected", "Selected for labeling", "No selection run picked anything."),
    ("labeled", "Labels given", "Nobody labeled anything."),
    ("bytes_uploaded", "Bytes uploaded (device reports)", "No device reported uploaded bytes."),
)


def _day_charts(days) -> list[dict]:
    charts = []
    for field, title, empty in DAY_CHARTS:
        bars = [(d.day[5:], float(getattr(d, field))) for d in days]  # MM-DD
        total = sum(v for _, v in bars)
        charts.append({"title": title, "total": total, "is_bytes": field == "bytes_uploaded",
                       "svg": bar_chart(bars, title=f"{title} per day") if total else None,
                       "empty": f"{empty} (last {len(days)} days)"})
    return charts


def _model_charts(models) -> list[dict]:
    evaluated = [m for m in models if m.accuracy is not None]
    by_labels = [Point(float(m.label_count or 0), 100 * m.accuracy, f"v{m.version}") for m in evaluated]
    by_bytes = [Point(m.upload_bytes / 2**20, 100 * m.accuracy, f"v{m.version}") for m in evaluated]
    empty = "No model version has a held-out evaluation yet (`cloud-selector train` runs the gate)."
    return [
        {"title": "Held-out accuracy (%) against labels spent", "empty": empty,
         "svg": line_chart(by_labels, title="accuracy against labels", x_label="labels", y_max=100) if evaluated
         else None},
        {"title": "Held-out accuracy (%) against data uploaded", "empty": empty,
         "svg": line_chart(by_bytes, title="accuracy against MiB uploaded", x_label="MiB uploaded", y_max=100)
         if evaluated else None},
    ]


def overview_page(request: Request) -> Response:
    from cloud_selector import dashboard_data
    from cloud_selector.releases import Releases

    catalog = services(request).catalog
    data = dashboard_data.overview(catalog, days=DAYS)
    by_state = data.candidates_by_state
    released = Releases(catalog).channel_version("default")
    return render(request, "overview.html", {
        "o": data, "total_candidates": sum(by_state.values()), "by_state": by_state, "released": released,
        "day_charts": _day_charts(data.days), "model_charts": _model_charts(data.models), "days": DAYS,
        "evaluated": [m for m in data.models if m.accuracy is not None],
    })


def routes() -> list:
    return [page("/", overview_page, nav="Overview")]
