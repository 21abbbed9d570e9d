"""`cloud-selector`: the cloud service's command line. All wiring happens here.

State lives in one data directory (--data-dir, or $CLOUD_SELECTOR_DATA_DIR): catalog.sqlite
(the catalog), blobs/ (images and model bundles), cache/ (local copies of bundles), keys/ (the
key that signs published bundles; see cloud_selector/keys.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from cloud_selector.selection_args import add_selection_arguments, round_config
from edge_agent.bundle import BundleError, InputSpec

log = logging.getLogger("cloud_selector")


@dataclass
class Services:
    catalog: object
    blobs: object
    registry: object


def open_services(data_dir: Path, *, catalog_url: str = "", blob_store: str = "",
                  env: Mapping[str, str] | None = None) -> Services:
    """The catalog (a SQLite file in `data_dir` unless `catalog_url` names a database), the blob
    store (`data_dir/blobs` unless `blob_store` is another directory or s3://bucket/prefix, with
    the S3 endpoint and keys from CLOUD_SELECTOR_S3_* in `env`) and the registry, with its local
    cache and signing key (`data_dir/keys`, or CLOUD_SELECTOR_SIGNING_KEY in `env`; made at the
    first publish of an embedded SQLite data dir, never for a shared catalog: cloud_selector/keys.py)."""
    from functools import partial

    from cloud_selector.catalog import Catalog
    from cloud_selector.keys import SIGNING_KEY_ENV, create_signing_key, open_signing_key, private_key_path
    from cloud_selector.registry import Registry
    from cloud_selector.s3store import open_blob_store

    env = os.environ if env is None else env
    data_dir.mkdir(parents=True, exist_ok=True)
    signing_key = open_signing_key(data_dir, env)  # before anything opens: a bad key file stops the command
    embedded = not catalog_url and not env.get(SIGNING_KEY_ENV)
    catalog = Catalog.open(catalog_url) if catalog_url else Catalog.sqlite(data_dir / "catalog.sqlite")
    blobs = open_blob_store(blob_store or str(data_dir / "blobs"), env)
    registry = Registry(catalog, blobs, data_dir / "cache" / "models", signing_key=signing_key,
                        create_signing_key=partial(create_signing_key, private_key_path(data_dir, env)) if embedded
                        else None)
    return Services(catalog, blobs, registry)


def cmd_devices(args, s: Services) -> int:
    from cloud_selector.auth import DeviceCredentialError, enroll_device, revoke_device

    try:
        if args.action == "add":
            device = enroll_device(s.catalog, args.device_id)
            print(f"device: {device.device_id}")
            print(f"token:  {device.token}")
            print("The token is shown only this once (the catalog keeps its hash). Put it in the agent's config:")
            print()
            print("[device]")
            print(f'id = "{device.device_id}"')
            print(f'token = "{device.token}"')
            return 0
        if args.action == "revoke":
            record = revoke_device(s.catalog, args.device_id)
            print(f"revoked {record.id} at {_utc(record.revoked_ms)}")
            return 0
    except DeviceCredentialError as exc:
        print(f"cloud-selector: error: {exc}", file=sys.stderr)
        return 2
    last_seen = {d["id"]: d["last_seen_ms"] for d in s.catalog.devices()}
    print("id\tcreated\trevoked\tlast_seen")
    for c in s.catalog.device_credentials():
        print(f"{c.id}\t{_utc(c.created_ms)}\t{_utc(c.revoked_ms) if c.revoked_ms else '-'}\t"
              f"{_utc(last_seen[c.id]) if c.id in last_seen else '-'}")
    return 0


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_select(args, s: Services) -> int:
    from cloud_selector.rounds import run_round

    result = run_round(s.catalog, s.blobs, s.registry, round_config(args))
    ratios = {k: round(v, 3) for k, v in result.metrics.items() if k.endswith("_ratio")}
    print(json.dumps({"run_id": result.run_id, "model_version": result.model_version, "pool": result.pool_size,
                      "duplicates": result.duplicates, "selected": len(result.selected), **ratios}))
    return 0


def cmd_train(args, s: Services) -> int:
    import shlex

    from cloud_selector.evaluation import GatePolicy, format_report
    from cloud_selector.promotion import ReleasePolicy
    from cloud_selector.retrain import TrainerChoice, retrain
    from cloud_selector.rollouts import AbortCriteria
    from cloud_selector.trainer import TrainConfig

    spec = None
    if args.input_size or args.color:
        color = args.color or "gray"
        channels = 1 if color == "gray" else 3
        spec = InputSpec(width=args.input_size or 28, height=args.input_size or 28, color=color,
                         mean=(0.5,) * channels, std=(0.5,) * channels)
    trainer = TrainerChoice(mode=args.mode, arch=args.arch,
                            external_command=tuple(shlex.split(args.external_command)))
    config = TrainConfig(epochs=args.epochs, seed=args.seed) if args.epochs else None
    result = retrain(s.catalog, s.blobs, s.registry, name=args.name, default_input=spec, config=config,
                     trainer=trainer, progress=not args.quiet,
                     gate=None if args.no_gate else GatePolicy(margin=args.margin, critical_classes=tuple(args.critical)),
                     release=ReleasePolicy(action=args.release, channel=args.channel, stages=args.stages,
                                           criteria=AbortCriteria()))
    if result.decision is not None and not args.quiet:
        print(format_report(result.decision.candidate, result.decision), file=sys.stderr)
    print(json.dumps({"version": result.manifest.version, "parent": result.manifest.parent_version,
                      "mode": result.mode, "labels": result.labels, "classes": len(result.manifest.classes),
                      "seconds": round(result.seconds, 1), "outcome": result.outcome,
                      "holdout_accuracy": round(result.decision.candidate.accuracy, 4) if result.decision else None}))
    return 0 if result.decision is None or result.decision.passed else 1


def cmd_keys(args, env: Mapping[str, str]) -> int:
    """Runs without `open_services`, which would create the key that `init` is asked to make."""
    from cloud_selector.keys import describe, init_keys, load_signing_key, private_key_path, public_key_path
    from edge_agent.signing import save_public_key

    path = private_key_path(args.data_dir, env)
    if args.action == "init":
        replaced = path.exists()
        key = init_keys(path, force=args.force)
        print(f"created signing key {path} (mode 0600) and its public key {public_key_path(path)}; key id {key.key_id}")
        if replaced:
            print("REPLACED the previous key: devices that trust only the old one refuse new bundles until they "
                  "trust this one (rotation steps: edge_agent/signing.py)")
        print("Give devices the public key: `cloud-selector keys show --out FILE`, then list FILE in "
              "[model] trusted_keys of agent.toml.")
        return 0
    key = load_signing_key(path)
    if key is None:
        raise LookupError(f"no signing key at {path}: run `cloud-selector keys init`")
    if args.out:
        if args.out.exists():
            raise FileExistsError(f"{args.out} already exists")
        save_public_key(args.out, key.public)
        print(f"wrote the public key (key id {key.key_id}) to {args.out}; list it in [model] trusted_keys on devices")
        return 0
    print(describe(key, path), end="")
    return 0


def cmd_status(args, s: Services) -> int:
    latest = s.registry.latest()
    print(json.dumps({"candidates": s.catalog.count_by_state(), "latest_model": latest["version"] if latest else None,
                      "devices": s.catalog.devices()}, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cloud_selector.label_commands import add_labels_parser
    from cloud_selector.model_commands import add_models_parser
    from cloud_selector.serve_command import add_serve_parser
    from cloud_selector.user_commands import add_users_parser

    parser = argparse.ArgumentParser(
        prog="cloud-selector",
        description="The cloud side of edgeflywheel: ingest candidates from devices over gRPC, drop near-duplicates, "
                    "select what to label by typicality and diversity, import labels, retrain, and serve new model "
                    "bundles to the fleet.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CLOUD_SELECTOR_DATA_DIR", "cloud-data")),
                        help="state directory: catalog.sqlite, blobs/, cache/, keys/ (default $CLOUD_SELECTOR_DATA_DIR "
                             "or ./cloud-data)")
    parser.add_argument("--catalog", default=os.environ.get("CLOUD_SELECTOR_CATALOG", ""), metavar="URL",
                        help="catalog database URL, e.g. postgresql+psycopg://user@host/db (default "
                             "$CLOUD_SELECTOR_CATALOG, else DATA_DIR/catalog.sqlite); migrated to the current schema "
                             "on open")
    parser.add_argument("--blob-store", default=os.environ.get("CLOUD_SELECTOR_BLOB_STORE", ""), metavar="SPEC",
                        help="where images and model bundles live: a directory or s3://bucket/prefix (default "
                             "$CLOUD_SELECTOR_BLOB_STORE, else DATA_DIR/blobs); S3 endpoint and keys come from "
                             "CLOUD_SELECTOR_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY (and _REGION, _CA_FILE)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    add_serve_parser(sub)
    p = sub.add_parser("devices", help="enrol, list or revoke devices and their tokens",
                       description="add NAME: issue a device and its secret token (shown once); list: every device "
                                   "with created, revoked and last-seen times; revoke ID: refuse the device's calls "
                                   "from now on.")
    devices_sub = p.add_subparsers(dest="action", required=True)
    d = devices_sub.add_parser("add", help="issue a device id and token (prints the agent config lines)")
    d.add_argument("device_id", metavar="NAME", help="the device id: 1-64 characters of A-Z a-z 0-9 . _ -")
    devices_sub.add_parser("list", help="id, created, revoked, last seen (UTC)")
    d = devices_sub.add_parser("revoke", help="refuse this device's calls from now on")
    d.add_argument("device_id", metavar="ID")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("select", help="run one selection round over the pool",
                       description="Drop near-duplicates of anything already pooled, selected or labeled, then select "
                                   "with a LightlyOne selection config (--config; strategies DIVERSITY, TYPICALITY, "
                                   "WEIGHTS, THRESHOLD, BALANCE, SIMILARITY over EMBEDDINGS, SCORES, PREDICTIONS, "
                                   "METADATA, RANDOM) or, by default, N candidates greedily by typicality x k-center "
                                   "diversity. Picks enter the labeling queue; the run is recorded with each pick's "
                                   "reasons and the selection's metrics against random picks. Prints a JSON summary.")
    add_selection_arguments(p)
    p.set_defaults(func=cmd_select)

    add_labels_parser(sub)

    p = sub.add_parser("train", help="retrain, gate on the held-out set, release what passes",
                       description="Train the next version on every label outside the fixed held-out set: head "
                                   "(default; a new linear head on the released model's backbone, so devices fetch "
                                   "only the head), full (the whole network) or external (your command). The first "
                                   "version is MobileNetV2 (ImageNet backbone, frozen, 96 px) or --arch small_cnn. "
                                   "The bundle is exported with checks (onnx.checker, ONNX Runtime vs torch parity), "
                                   "signed and recorded; then the gate compares it with the released version on the "
                                   "held-out set and, if it is not worse than --margin, promotes it or starts a "
                                   "staged rollout (--release). Exit 1 when the gate refuses it.")
    p.add_argument("--mode", choices=["head", "full", "external"], default="head")
    p.add_argument("--arch", choices=["mobilenet_v2", "small_cnn"], default="mobilenet_v2",
                   help="first version only (later versions keep the parent's)")
    p.add_argument("--external-command", default="", metavar="CMD",
                   help="external mode: the command; it gets $FLYWHEEL_DATASET and $FLYWHEEL_OUTPUT "
                        "(see cloud_selector/external_trainer.py) and must write an ONNX file there")
    p.add_argument("--name", default="classifier", help="model name for the first version")
    p.add_argument("--epochs", type=int, default=0, help="most epochs (default: the mode's own; early stopping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=0, help="first version, small_cnn: input size (default 28)")
    p.add_argument("--color", choices=["gray", "rgb", "bgr"], default="", help="first version, small_cnn (gray)")
    p.add_argument("--margin", type=float, default=0.01, help="gate: accuracy drop allowed (default 0.01)")
    p.add_argument("--critical", action="append", default=[], metavar="CLASS",
                   help="gate: a class whose recall must not drop by more than 0.02 (repeatable)")
    p.add_argument("--no-gate", action="store_true", help="release without evaluating (not for production)")
    p.add_argument("--release", choices=["promote", "rollout", "none"], default="promote",
                   help="what passing the gate does: promote to the channel at once, start a staged rollout, or "
                        "nothing (`models promote` later); default promote")
    p.add_argument("--channel", default="", help="release channel (default 'default')")
    p.add_argument("--stages", type=lambda t: tuple(int(x) for x in t.split(",")), default=(10, 50, 100),
                   help="--release rollout: cumulative percentages (default 10,50,100)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or report")
    p.set_defaults(func=cmd_train)

    add_models_parser(sub)
    add_users_parser(sub)

    p = sub.add_parser("keys", help="the key that signs model bundles: create it, show its public key",
                       description="init [--force]: create the Ed25519 key pair in DATA_DIR/keys/ (private key mode "
                                   "0600; an existing key is replaced only with --force). show [--out FILE]: print "
                                   "the key id and public key (PEM), or write the public key to FILE for devices' "
                                   "[model] trusted_keys. A private key readable by group or others is refused. "
                                   "CLOUD_SELECTOR_SIGNING_KEY names another private key file. An embedded data "
                                   "dir gets a key at its first publish anyway; with a shared catalog run init once and "
                                   "give every publisher that key.")
    keys_sub = p.add_subparsers(dest="action", required=True)
    k = keys_sub.add_parser("init", help="create the signing key pair")
    k.add_argument("--force", action="store_true", help="replace an existing key (devices must trust the new one)")
    k = keys_sub.add_parser("show", help="print the key id and public key, or write the public key to a file")
    k.add_argument("--out", type=Path, metavar="FILE", help="write the public key (PEM) here for devices")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("status", help="candidate counts, latest model, devices (JSON)")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader announces CPU features at INFO
    from cloud_selector.blobstore import BlobError
    from cloud_selector.catalog import UnknownCandidates
    from cloud_selector.labels import LabelFileError
    from cloud_selector.releases import ReleaseError
    from cloud_selector.s3store import S3ConfigError
    from cloud_selector.selection_config import SelectionConfigError
    from cloud_selector.external_trainer import ExternalTrainerError
    from cloud_selector.trainer import ExportError, TrainingError
    from edge_agent.signing import SigningError

    if args.command == "models" and args.action in ("publish", "export") and not args.target:
        print(f"cloud-selector: error: models {args.action} needs a directory", file=sys.stderr)
        return 2
    try:
        if args.command == "keys":
            return cmd_keys(args, os.environ)
        return args.func(args, open_services(args.data_dir, catalog_url=args.catalog, blob_store=args.blob_store))
    except (BundleError, BlobError, LabelFileError, UnknownCandidates, TrainingError, ExportError, LookupError,
            ExternalTrainerError,
            S3ConfigError, SelectionConfigError, SigningError, ReleaseError, OSError) as exc:
        print(f"cloud-selector: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
