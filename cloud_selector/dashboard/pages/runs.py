"""Selection runs: the list, one run (config, metrics against random picks, each pick with every
strategy's part in it), and starting a run from a config editor (admin)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from cloud_selector.dashboard.web import (
    ADMIN,
    BadRequest,
    NotFound,
    actor,
    form,
    page,
    redirect,
    render,
    services,
)

MAX_PICKS_SHOWN = 500
METRIC_ROWS = (("diversity", "Diversity (mean distance to the nearest other pick)", "higher"),
               ("coverage_mean", "Coverage, mean (distance of the pool to its nearest pick)", "lower"),
               ("coverage_max", "Coverage, worst case", "lower"),
               ("class_balance", "Class balance (normalised entropy of predicted classes)", "higher"))


def _strategies(config: dict) -> list[str]:
    """'TYPICALITY · EMBEDDINGS' etc., in config order (the picks' contributions index these)."""
    names = []
    for entry in config.get("strategies", []):
        inp = entry.get("input", {})
        what = inp.get("type", "?") + (f":{inp['key']}" if inp.get("key") else "") + \
            (f":{inp['task']}" if inp.get("task") else "")
        names.append(f"{entry.get('strategy', {}).get('type', '?')} · {what}")
    return names


def runs_list(request: Request) -> Response:
    runs = services(request).catalog.selection_runs(limit=200)
    for run in runs:
        run["strategy_names"] = _strategies(run["config"])
    return render(request, "runs.html", {"runs": runs})


def _run(catalog, run_id: int) -> dict:
    from cloud_selector.schema import selection_runs

    with catalog.engine.connect() as conn:
        row = conn.execute(sa.select(selection_runs).where(selection_runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no selection run {run_id}")
    return {**row._asdict(), "config": json.loads(row.config), "metrics": json.loads(row.metrics or "{}")}


def run_detail(request: Request) -> Response:
    catalog = services(request).catalog
    run = _run(catalog, request.path_params["run_id"])
    picks = catalog.selection_picks(run["id"])
    shown = picks[:MAX_PICKS_SHOWN]
    rows = {r.id: r for r in catalog.candidates(ids=[p["candidate_id"] for p in shown])} if shown else {}
    names = _strategies(run["config"])
    for p in shown:
        row = rows.get(p["candidate_id"])
        p["state"], p["label"] = (row.state, row.label) if row else ("gone", None)
        by_index = {c["strategy_index"]: c for c in p["contributions"]}
        p["cells"] = [by_index.get(i) for i in range(len(names))]
    metrics = run["metrics"]
    table = [{"key": key, "title": title, "better": better, "picked": metrics.get("picked", {}).get(key),
              "random": metrics.get("random", {}).get(key)} for key, title, better in METRIC_ROWS]
    return render(request, "run_detail.html", {"run": run, "picks": shown, "total_picks": len(picks),
                                               "strategy_names": names, "metric_rows": table})


def _default_config(catalog) -> str:
    from cloud_selector.rounds import default_selection

    latest = catalog.latest_selection_run()
    return json.dumps(latest["config"] if latest else default_selection(50), indent=2)


def new_run(request: Request) -> Response:
    """GET: the editor, holding the latest run's config (or the default). POST: check it and,
    unless only checking was asked, run a round now."""
    s = services(request)
    if request.method == "GET":
        return _editor(request, _default_config(s.catalog), "0.2")
    data = form(request)
    text = str(data.get("config", ""))
    distance_text = str(data.get("duplicate_distance", "0.2"))
    config, error = _check(text)
    if error is None:
        try:
            distance = float(distance_text)
            if not 0.0 <= distance <= 10.0:
                raise ValueError
        except ValueError:
            error = {"path": "duplicate distance", "problem": "must be a number from 0 to 10 (0.2 is the default)"}
    if error is not None or data.get("action") == "check":
        return _editor(request, text, distance_text, error=error, checked=error is None,
                       status_code=400 if error else 200)
    return _start(request, config, distance, text, distance_text)


def _check(text: str) -> tuple[dict | None, dict | None]:
    """(the config, None) or (None, {path, problem}) naming the field LightlyOne's schema refuses."""
    from cloud_selector.selection_config import SelectionConfigError, parse_selection_config

    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, {"path": f"JSON line {exc.lineno}, column {exc.colno}", "problem": exc.msg}
    if not isinstance(config, dict):
        return None, {"path": "(the whole config)", "problem": "must be a JSON object with n_samples and strategies"}
    try:
        parse_selection_config(config)
    except SelectionConfigError as exc:
        return None, {"path": exc.path or "(the whole config)", "problem": exc.problem}
    return config, None


def _start(request: Request, config: dict, distance: float, text: str, distance_text: str) -> Response:
    from cloud_selector.catalog import now_ms
    from cloud_selector.rounds import RoundConfig, run_round
    from cloud_selector.scheduler import LOCK_NAME
    from cloud_selector.selection_config import SelectionConfigError

    s = services(request)
    if s.registry.latest() is None:
        raise BadRequest("no model is published yet: a selection round embeds with the released model "
                         "(`cloud-selector train` or `models publish` first)")
    # The scheduler's lock: a run started here never overlaps a scheduled one on any replica.
    with s.catalog.try_lock(LOCK_NAME) as held:
        if not held:
            return redirect(request, "/runs", "A selection round is running now (scheduled, or started by someone "
                                              "else): try again when it has finished.", kind="error")
        started = now_ms()
        try:
            result = run_round(s.catalog, s.blobs, s.registry, RoundConfig(selection=config,
                                                                           duplicate_distance=distance))
        except SelectionConfigError as exc:  # what only the pool can tell (metadata keys, classes)
            return _editor(request, text, distance_text, error={"path": exc.path or "(the whole config)",
                                                                "problem": exc.problem}, status_code=400)
        s.catalog.finish_selection_run(result.run_id, started_ms=started, replica=actor(request), trigger="dashboard")
    return redirect(request, f"/runs/{result.run_id}",
                    f"Run {result.run_id}: {len(result.selected)} picked from a pool of {result.pool_size} "
                    f"({result.duplicates} near-duplicates dropped).")


def _editor(request: Request, text: str, distance: str, *, error: dict | None = None, checked: bool = False,
            status_code: int = 200) -> Response:
    return render(request, "run_new.html", {"config_text": text, "duplicate_distance": distance, "error": error,
                                            "checked": checked}, status_code=status_code)


def routes() -> list:
    return [
        page("/runs", runs_list, nav="Selection runs"),
        page("/runs/new", new_run, methods=("GET", "POST"), role=ADMIN),
        page("/runs/{run_id:int}", run_detail),
    ]
