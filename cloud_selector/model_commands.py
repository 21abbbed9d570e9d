"""`cloud-selector models ...` and `cloud-selector rollout ...`: versions, lineage, releases.

models list                      every version: parent, trainer, labels, gate, status, channels
models show V                    lineage, evaluation report with confusion matrix, gate decision
models publish DIR [--release]   record a bundle (and release it at once, skipping the gate)
models export OUT [--version V]  copy a bundle out, e.g. as a device's first model
models evaluate V                run the gate for V against the channel's version
models promote V [--force]       release V to a channel (needs a passed gate, or --force)
models rollback [--to V]         send a channel back (signed revocation of what it ran)
models pin DEVICE V | unpin DEVICE
models holdout [--reset]         show or remake the fixed held-out set
rollout start V [--stages 10,50,100] [criteria] | status [ID] | list | abort ID
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
from pathlib import Path

from cloud_selector.releases import DEFAULT_CHANNEL, ReleaseError, Releases


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _releases(s) -> Releases:
    return Releases(s.catalog, s.registry.signer)


def cmd_models(args, s) -> int:
    releases = _releases(s)
    action = args.action
    if action == "publish":
        manifest = s.registry.publish(args.target, release=args.release, actor=_actor())
        key = s.registry.signing_key
        print(f"published {manifest.name} v{manifest.version} "
              f"({f'signed by key {key.key_id}' if key else 'UNSIGNED: no signing key, see `keys init`'})"
              f"{'; released to the default channel' if args.release else '; run `models evaluate` / `promote`'}")
        return 0
    if action == "export":
        latest = s.registry.released()
        if latest is None:
            raise LookupError("no published model yet")
        version = args.version or latest["version"]
        out = Path(args.target)
        if out.exists():
            raise FileExistsError(f"{out} already exists")
        shutil.copytree(s.registry.local_bundle(version), out)
        print(f"exported v{version} to {out} (use it as the agent's model.bundle_dir)")
        return 0
    if action == "list":
        return _list(s, releases, args.json)
    if action == "show":
        return _show(releases, _version(args))
    if action == "evaluate":
        from cloud_selector.evaluation import GatePolicy, format_report
        from cloud_selector.promotion import judge

        decision = judge(s.registry, releases, s.blobs, _version(args), channel=args.channel,
                         policy=GatePolicy(margin=args.margin, critical_classes=tuple(args.critical)))
        print(format_report(decision.candidate, decision))
        return 0 if decision.passed else 1
    if action == "promote":
        from cloud_selector.promotion import promote

        promote(releases, _version(args), channel=args.channel, actor=_actor(), force=args.force)
        print(f"v{_version(args)} released to channel {args.channel or DEFAULT_CHANNEL}")
        return 0
    if action == "rollback":
        old, new = releases.rollback(channel=args.channel, to_version=args.to or None, actor=_actor(),
                                     reason=args.reason)
        print(f"channel {args.channel or DEFAULT_CHANNEL}: v{old} -> v{new}; v{old} revoked (signed), devices go back")
        return 0
    if action in ("pin", "unpin"):
        if not args.target:
            raise ReleaseError(f"models {action} needs a device id")
        if action == "pin":
            releases.pin(args.target, _version(args), actor=_actor())
            print(f"device {args.target} pinned to v{_version(args)}")
        else:
            print(f"device {args.target} {'unpinned' if releases.unpin(args.target) else 'was not pinned'}")
        return 0
    return _holdout(s, releases, args.reset)


def _version(args) -> int:
    version = args.version or args.version_arg or (int(args.target) if str(args.target).isdigit() else 0)
    if version <= 0:
        raise ReleaseError(f"models {args.action} needs a version: `models {args.action} V` or --version V")
    return version


def _list(s, releases: Releases, as_json: bool) -> int:
    channels = releases.plan().channels
    rows = []
    for m in s.catalog.list_models():
        record = releases.lineage(m["version"])
        evaluation = record.get("evaluation") or {}
        rows.append({"version": m["version"], "name": m["name"], "parent": m["parent_version"],
                     "trainer": record["trainer_mode"], "labels": record["label_count"] or
                     m["manifest"].get("label_set", {}).get("count", 0),
                     "accuracy": evaluation.get("accuracy"), "status": record["status"],
                     "channels": sorted(c for c, v in channels.items() if v == m["version"])})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print("version  parent  trainer   labels  holdout acc  status       channels")
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        print(f"v{r['version']:<7} v{r['parent']:<6} {r['trainer'] or '-':<9} {r['labels']:>6}  {acc:>11}  "
              f"{r['status']:<12} {','.join(r['channels'])}")
    return 0


def _show(releases: Releases, version: int) -> int:
    from cloud_selector.evaluation import EvalReport, format_report

    record = releases.lineage(version)
    if record is None:
        raise ReleaseError(f"no model version {version}")
    manifest = record["manifest"]
    print(f"v{version} {record['name']}  parent v{record['parent_version']}  status {record['status']}")
    print(f"trainer: {json.dumps(manifest.get('trainer', {}))}")
    print(f"labels: {record['label_count']} (sha256 {record['label_sha256'][:16] or '-'})  classes: "
          f"{', '.join(manifest['classes'])}")
    if record.get("released_by"):
        print(f"released by {record['released_by']} at {record['released_ms']}")
    sizes = {f["path"]: f["size"] for f in record["files"]}
    print("files: " + ", ".join(f"{p} {n / 1024:.1f} KiB" for p, n in sorted(sizes.items())))
    if record.get("evaluation"):
        print(format_report(EvalReport.from_dict(record["evaluation"])))
    if record.get("gate"):
        print(("gate PASSED: " if record["gate"]["passed"] else "gate REFUSED: ") + "; ".join(record["gate"]["reasons"]))
    return 0


def _holdout(s, releases: Releases, reset: bool) -> int:
    from cloud_selector.promotion import ensure_holdout

    if reset:
        releases.set_holdout([])
    pairs = ensure_holdout(s.catalog, releases)
    counts: dict[str, int] = {}
    for _, label in pairs:
        counts[label] = counts.get(label, 0) + 1
    print(json.dumps({"size": len(pairs), "per_class": dict(sorted(counts.items())),
                      "note": "fixed across versions until `models holdout --reset`" if pairs else
                      "not enough labels yet for a held-out set"}, indent=2))
    return 0


def cmd_rollout(args, s) -> int:
    from cloud_selector import rollouts

    releases = _releases(s)
    if args.action == "start":
        criteria = rollouts.AbortCriteria(
            max_failure_fraction=args.max_failure_fraction, min_devices=args.min_devices,
            device_timeout_s=args.device_timeout, health_frames=args.health_frames)
        rollout_id = rollouts.start_rollout(releases, args.version, channel=args.channel, stages=args.stages,
                                            criteria=criteria, actor=_actor())
        print(f"rollout {rollout_id}: v{args.version} on channel {args.channel or DEFAULT_CHANNEL}, stages "
              f"{args.stages}; `cloud-selector serve` advances it")
        return 0
    if args.action == "abort":
        rollouts.abort(releases, args.rollout_id, args.reason or "aborted by an operator", actor=_actor())
        print(f"rollout {args.rollout_id} aborted; touched devices go back to the previous version")
        return 0
    if args.action == "list":
        for r in rollouts.list_rollouts(s.catalog):
            print(f"{r['id']}  v{r['version']} (from v{r['previous_version']})  {r['channel']}  {r['state']}  "
                  f"stage {r['stage'] + 1}/{len(r['stages'])}  {r['reason'][:80]}")
        return 0
    record = (rollouts.rollout(s.catalog, args.rollout_id) if args.rollout_id
              else next(iter(rollouts.list_rollouts(s.catalog, 1)), None))
    if record is None:
        raise ReleaseError("no such rollout" if args.rollout_id else "no rollout yet")
    if not args.rollout_id:
        record = rollouts.rollout(s.catalog, record["id"])
    print(json.dumps(record, indent=2, default=str))
    return 0


def _stages(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"stages are comma-separated percentages, e.g. 10,50,100 (got {text!r})")


def add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="model versions: list, show, evaluate, promote, rollback, pin, holdout",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["list", "show", "publish", "export", "evaluate", "promote", "rollback", "pin",
                                      "unpin", "holdout"])
    p.add_argument("target", nargs="?", default="",
                   help="show/evaluate/promote: VERSION; publish: bundle directory; export: output directory; "
                        "pin/unpin: DEVICE")
    p.add_argument("version_arg", nargs="?", type=int, default=0, help="pin: VERSION")
    p.add_argument("--version", type=int, default=0, help="which version (export: default the released one)")
    p.add_argument("--channel", default="", help=f"release channel (default {DEFAULT_CHANNEL!r})")
    p.add_argument("--release", action="store_true", help="publish: release to the default channel at once (no gate)")
    p.add_argument("--force", action="store_true", help="promote: release although the gate refused it (recorded)")
    p.add_argument("--to", type=int, default=0, help="rollback: the version to go back to (default the one before)")
    p.add_argument("--reason", default="", help="rollback: why (stored in the signed revocation)")
    p.add_argument("--margin", type=float, default=0.01, help="evaluate: accuracy drop allowed (default 0.01)")
    p.add_argument("--critical", action="append", default=[], metavar="CLASS",
                   help="evaluate: a class whose recall must not drop (repeatable)")
    p.add_argument("--reset", action="store_true", help="holdout: remake the held-out set from today's labels")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("rollout", help="staged rollouts: start, status, list, abort",
                       description="Send a version to a canary share of a channel's devices, widen in stages while "
                                   "devices report healthy, abort and roll the touched devices back when more than "
                                   "--max-failure-fraction fail. `cloud-selector serve` advances rollouts.")
    rsub = p.add_subparsers(dest="action", required=True)
    r = rsub.add_parser("start", help="start rolling out a version")
    r.add_argument("version", type=int)
    r.add_argument("--channel", default="")
    r.add_argument("--stages", type=_stages, default=(10, 50, 100), help="cumulative percentages (default 10,50,100)")
    r.add_argument("--max-failure-fraction", type=float, default=0.05, help="abort above this (default 0.05)")
    r.add_argument("--min-devices", type=int, default=5, help="decided devices before the fraction counts (default 5)")
    r.add_argument("--device-timeout", type=float, default=900.0, help="seconds for a device's verdict (default 900)")
    r.add_argument("--health-frames", type=int, default=0, help="frames devices check (default: their setting)")
    r = rsub.add_parser("status", help="a rollout with its devices (default the newest), JSON")
    r.add_argument("rollout_id", nargs="?", default="")
    rsub.add_parser("list", help="recent rollouts")
    r = rsub.add_parser("abort", help="stop a rollout; touched devices go back")
    r.add_argument("rollout_id")
    r.add_argument("--reason", default="")
    p.set_defaults(func=cmd_rollout)
