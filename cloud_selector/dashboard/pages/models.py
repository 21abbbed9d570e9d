"""Models: every version with its status, trainer, labels, held-out accuracy and lineage; one
version's evaluation (per-class figures, confusion matrix, the gate's reasons); and the release
actions, admin only and each behind a confirmation page: promote, roll back a channel, pin and
unpin a device, start and abort a staged rollout."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cloud_selector.dashboard.web import (
    ADMIN,
    BadRequest,
    NotFound,
    actor,
    confirm_then,
    form,
    page,
    releases,
    render,
    services,
)
from cloud_selector.releases import DEFAULT_CHANNEL, ReleaseError

MAX_LINEAGE = 50


def _record(request: Request) -> dict:
    version = request.path_params["version"]
    record = releases(request).lineage(version)
    if record is None:
        raise NotFound(f"no model version {version} (see the Models page)")
    return record


def _accuracy(record: dict) -> float | None:
    evaluation = record.get("evaluation") or {}
    return evaluation.get("accuracy")


def models_list(request: Request) -> Response:
    rel = releases(request)
    plan = rel.plan()
    rows = []
    for m in reversed(services(request).catalog.list_models()):
        record = rel.lineage(m["version"])
        rows.append({**record, "accuracy": _accuracy(record), "gate_passed": (record.get("gate") or {}).get("passed"),
                     "channels": sorted(c for c, v in plan.channels.items() if v == m["version"]),
                     "pinned": sorted(d for d, v in plan.pins.items() if v == m["version"])})
    return render(request, "models.html", {"models": rows})


def model_detail(request: Request) -> Response:
    from cloud_selector import rollouts
    from cloud_selector.evaluation import EvalReport

    record = _record(request)
    version = record["version"]
    catalog, rel = services(request).catalog, releases(request)
    plan = rel.plan()
    report = EvalReport.from_dict(record["evaluation"]) if record.get("evaluation") else None
    gate = record.get("gate")
    chain, parent = [], record["parent_version"]
    while parent and len(chain) < MAX_LINEAGE:
        ancestor = catalog.model(parent)
        if ancestor is None:
            break
        chain.append(ancestor)
        parent = ancestor["parent_version"]
    children = [m["version"] for m in catalog.list_models() if m["parent_version"] == version]
    channels_here = sorted(c for c, v in plan.channels.items() if v == version)
    devices = sorted({d["id"] for d in catalog.devices()} | {w["device_id"] for w in rel.watchers()})
    return render(request, "model_detail.html", {
        "m": record, "report": report, "gate": gate, "ancestors": chain, "children": children,
        "channels_here": channels_here, "channels": plan.channels, "default_channel": DEFAULT_CHANNEL,
        "history": [h for h in rel.history() if version in (h["version"], h["previous_version"])],
        "pins": sorted(plan.pins.items()), "devices": devices,
        "rollouts": [r for r in rollouts.list_rollouts(catalog) if r["version"] == version],
    })


def _channel(request: Request) -> str:
    from cloud_selector.releases import channel_name

    try:
        return channel_name(str(form(request).get("channel", "")))
    except ReleaseError as exc:
        raise BadRequest(str(exc)) from exc


def promote(request: Request) -> Response:
    from cloud_selector.promotion import promote as promote_version

    record = _record(request)
    version, channel = record["version"], _channel(request)
    force = form(request).get("force") == "on"
    gate = record.get("gate") or {}
    current = releases(request).channel_version(channel)
    details = [f"Channel {channel} runs {f'v{current}' if current else 'nothing yet'}; its devices move to v{version} "
               "at their next poll (pinned devices and running rollouts excepted)."]
    if gate.get("passed"):
        details.append("The evaluation gate passed: " + "; ".join(gate.get("reasons", [])))
    else:
        why = "; ".join(gate.get("reasons", [])) or "it was never evaluated"
        details.append(f"The gate did NOT pass ({why})." + (" Forcing it is recorded with the release." if force else
                                                             " Tick 'force' to release it anyway."))

    def act() -> str:
        promote_version(releases(request), version, channel=channel, actor=actor(request), force=force)
        return f"v{version} released to channel {channel}."

    return confirm_then(request, act, back=f"/models/{version}", title=f"Promote v{version}",
                        question=f"Release v{version} to channel {channel}{' despite the gate' if force else ''}?",
                        details=details, button=f"Promote v{version}", errors=(ReleaseError,))


def rollback(request: Request) -> Response:
    channel = _channel(request)
    to_text = str(form(request).get("to", "")).strip()
    to_version = int(to_text) if to_text.isdigit() and int(to_text) > 0 else None
    reason = str(form(request).get("reason", "")).strip()[:500]
    rel = releases(request)
    current = rel.channel_version(channel)
    back = f"/models/{current}" if current else "/models"

    def act() -> str:
        old, new = rel.rollback(channel=channel, to_version=to_version, actor=actor(request),
                                reason=reason or f"rolled back from the dashboard by {actor(request)}")
        return f"Channel {channel}: v{old} → v{new}; v{old} is revoked (signed) and devices go back."

    target = f"v{to_version}" if to_version else "the version it ran before"
    return confirm_then(request, act, back=back, title=f"Roll back channel {channel}",
                        question=f"Roll channel {channel} back from v{current} to {target}?",
                        details=[f"v{current} gets a signed revocation: devices running it install {target}.",
                                 "The rolled-back version is marked rolled_back."], button="Roll back",
                        errors=(ReleaseError,))


def pin(request: Request) -> Response:
    record = _record(request)
    version, device = record["version"], _device(request)
    running = releases(request).watcher(device)

    def act() -> str:
        releases(request).pin(device, version, actor=actor(request))
        return f"Device {device} pinned to v{version}."

    runs = f"v{running['version']}" if running else "an unknown version"
    details = [f"{device} runs {runs}; a pin overrides its channel and any rollout until it is unpinned."]
    if running and running["version"] > version:
        details.append(f"v{running['version']} is newer: a signed revocation lets the device go back.")
    return confirm_then(request, act, back=f"/models/{version}", title=f"Pin {device}",
                        question=f"Pin device {device} to v{version}?", details=details, button="Pin",
                        errors=(ReleaseError,))


def unpin(request: Request) -> Response:
    device = _device(request)

    def act() -> str:
        was = releases(request).unpin(device)
        return f"Device {device} {'unpinned: it follows its channel again' if was else 'was not pinned'}."

    return confirm_then(request, act, back="/models", title=f"Unpin {device}", question=f"Unpin device {device}?",
                        details=["It goes back to its channel's version (or a running rollout's)."], button="Unpin",
                        danger=False)


def _device(request: Request) -> str:
    device = str(form(request).get("device_id", "")).strip()
    if not device or len(device) > 128 or not device.isprintable():
        raise BadRequest("name a device (1-128 printable characters)")
    return device


def start_rollout(request: Request) -> Response:
    from cloud_selector import rollouts

    record = _record(request)
    version, channel = record["version"], _channel(request)
    data = form(request)
    try:
        stages = rollouts.check_stages(int(x) for x in str(data.get("stages", "10,50,100")).split(","))
        fraction = float(data.get("max_failure_fraction", "0.05"))
        criteria = rollouts.AbortCriteria(max_failure_fraction=fraction)
        criteria.validate()
    except ValueError as exc:  # ReleaseError is one, and so is int("x")
        raise BadRequest(f"stages are comma-separated increasing percentages, e.g. 10,50,100, and the failure "
                         f"fraction a number in [0, 1) ({exc})") from exc

    def act() -> str:
        rollout_id = rollouts.start_rollout(releases(request), version, channel=channel, stages=stages,
                                            criteria=criteria, actor=actor(request))
        return f"Rollout {rollout_id[:8]} started: v{version} on channel {channel} in stages {list(stages)}."

    return confirm_then(request, act, back=f"/models/{version}", title=f"Roll out v{version}",
                        question=f"Start a staged rollout of v{version} on channel {channel}?",
                        details=[f"Stages {', '.join(f'{s}%' for s in stages)} of the channel's devices; it aborts and "
                                 f"sends touched devices back when more than {fraction:.0%} of them fail.",
                                 "`cloud-selector serve` advances it; progress is on the Fleet page."],
                        button="Start rollout", errors=(ReleaseError,))


def abort_rollout(request: Request) -> Response:
    from cloud_selector import rollouts

    rollout_id = request.path_params["rollout_id"]
    record = rollouts.rollout(services(request).catalog, rollout_id)
    if record is None:
        raise NotFound(f"no rollout {rollout_id}")
    reason = str(form(request).get("reason", "")).strip()[:500] or "aborted from the dashboard"

    def act() -> str:
        rollouts.abort(releases(request), rollout_id, reason, actor=actor(request))
        return f"Rollout {rollout_id[:8]} aborted; touched devices go back to v{record['previous_version']}."

    return confirm_then(request, act, back="/fleet", title="Abort rollout",
                        question=f"Abort the rollout of v{record['version']} on channel {record['channel']}?",
                        details=[f"{sum(record['counts'].values())} devices were assigned; they are sent "
                                 f"v{record['previous_version']} back with a signed revocation."],
                        button="Abort rollout", errors=(ReleaseError,))


def routes() -> list:
    return [
        page("/models", models_list, nav="Models"),
        page("/models/{version:int}", model_detail),
        page("/models/{version:int}/promote", promote, methods=("POST",), role=ADMIN),
        page("/models/{version:int}/pin", pin, methods=("POST",), role=ADMIN),
        page("/models/{version:int}/rollout", start_rollout, methods=("POST",), role=ADMIN),
        page("/models/rollback", rollback, methods=("POST",), role=ADMIN),
        page("/models/unpin", unpin, methods=("POST",), role=ADMIN),
        page("/rollouts/{rollout_id}/abort", abort_rollout, methods=("POST",), role=ADMIN),
    ]
