"""`edge-agent`: the device agent's command line. All wiring happens here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

from edge_agent import __version__
from edge_agent import doctor as doctor_checks
from edge_agent.agent import Agent, Heartbeat, snapshot
from edge_agent.appearance import RecentFrames
from edge_agent.bundle import BundleError
from edge_agent.config import AgentConfig, ConfigError, load_config, reference_markdown, template
from edge_agent.logs import setup_logging
from edge_agent.metrics import MetricsServer, agent_samples
from edge_agent.policy import KeepPolicy
from edge_agent.runtime import LoadedModel, ProviderSettings
from edge_agent.signing import BundleVerifier, KeyFileError, SigningError, load_trusted_keys
from edge_agent.sources import SourceError, SourceSpec, open_source
from edge_agent.spool import Spool
from edge_agent.transport import ClientTls, DeviceCredentials, TransportConfigError, open_channel
from edge_agent.health import HealthMonitor, HealthPolicy
from edge_agent.model_store import ModelStore, ModelStoreError
from edge_agent.updater import CRASH_ENV, STAGES, ModelSlot, ModelUpdater
from edge_agent.uploader import Uploader

log = logging.getLogger("edge_agent")


def provider_settings(config: AgentConfig) -> ProviderSettings:
    m = config.model
    return ProviderSettings(providers=tuple(m.providers), cuda_device_id=m.cuda_device_id,
                            trt_engine_cache_dir=m.trt_engine_cache_dir, trt_fp16=m.trt_fp16,
                            intra_op_threads=m.intra_op_threads, warmup_runs=m.warmup_runs)


def source_spec(config: AgentConfig) -> SourceSpec:
    return SourceSpec(**dataclasses.asdict(config.source))


def credentials(config: AgentConfig) -> DeviceCredentials | None:
    """The device's identity for every call; None when no token is configured (a development
    server started with --allow-unauthenticated)."""
    if config.device.token:
        return DeviceCredentials(config.device.id, config.device.token)
    if config.device.token_file:
        return DeviceCredentials.from_token_file(config.device.id, config.device.token_file)
    return None


def cloud_channel(config: AgentConfig) -> grpc.Channel:
    c = config.cloud
    tls = ClientTls(ca_file=c.tls_ca_file, cert_file=c.tls_cert_file, key_file=c.tls_key_file,
                    server_name=c.tls_server_name) if c.tls or c.tls_ca_file else None
    return open_channel(c.address, credentials=credentials(config), tls=tls,
                        max_message_bytes=int(c.max_message_mb * 1024 * 1024))


def bundle_verifier(config: AgentConfig) -> BundleVerifier:
    """Which bundles this device trusts ([model] trusted_keys, require_signature). Raises
    KeyFileError for a key file that is missing or not an Ed25519 public key."""
    try:
        trusted = load_trusted_keys(config.model.trusted_keys)
    except KeyFileError as exc:
        raise KeyFileError(f"model.trusted_keys: {exc}") from exc
    return BundleVerifier(trusted, require_signature=config.model.require_signature)


def _load_initial_model(config: AgentConfig, models_dir: Path, verifier: BundleVerifier) -> LoadedModel:
    """The newest of the installed bundle (CURRENT), the kept previous one and the configured
    one, among those that pass the same checks as an update (signature when keys are trusted,
    hashes, smoke run) and whose version was neither revoked nor failed on this device.

    Any may be refused while another is fine: after a key rotation the configured bundle may
    carry the retired key's signature while the installed one carries the new key's. The
    agent starts with what verifies (logging what it refused), falling back from the newest
    to the kept previous and the configured bundle, and raises the first refusal when nothing
    does. A model update still on trial (the agent died between its swap and its health
    verdict) is rolled back first: its version is marked failed and a ROLLED_BACK report waits
    in the outbox for the updater."""
    store = ModelStore(models_dir)
    store.recover_trial(config.device.id)
    configured = Path(config.model.bundle_dir).resolve()
    previous = store.previous
    kept = previous.dir if previous is not None and previous.dir.is_dir() else None
    usable: list[tuple[int, bool, Path]] = []
    refused: list[tuple[Path, BundleError]] = []
    for bundle_dir in dict.fromkeys(d.resolve() for d in (configured, store.installed_bundle(), kept) if d):
        try:
            version = verifier.verify(bundle_dir).manifest.version
            excluded = store.excluded(version)
            if excluded:
                raise BundleError(f"{excluded}: never run again")
            usable.append((version, bundle_dir == configured, bundle_dir))
        except BundleError as exc:
            refused.append((bundle_dir, exc))
    model = None
    for _, _, bundle_dir in sorted(usable, reverse=True):  # the newest first; a tie keeps the configured one
        try:
            model = LoadedModel(bundle_dir, settings=provider_settings(config))
            break
        except BundleError as exc:
            refused.append((bundle_dir, exc))
    if model is None:
        raise refused[0][1]
    for bundle_dir, exc in refused:
        log.warning("bundle %s is unusable (%s); not using it", bundle_dir, exc)
    installed = store.installed_bundle()
    if installed is not None and installed.resolve() != model.bundle_dir:
        store.point_current(model.bundle_dir)  # CURRENT names what runs, for the next start
    store.prune(model.version)
    return model


def run(config: AgentConfig, *, drain_timeout_s: float) -> int:
    state_dir = Path(config.device.state_dir)
    models_dir = state_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    verifier = bundle_verifier(config)
    crash_at = os.environ.get(CRASH_ENV, "")
    if crash_at not in ("", *STAGES):
        raise ConfigError(f"{CRASH_ENV}={crash_at!r} (a crash-test hook) must be one of {', '.join(STAGES)}, or unset")
    slot = ModelSlot(_load_initial_model(config, models_dir, verifier))
    log.info("device %s running model %s v%d on %s", config.device.id, slot.model.manifest.name, slot.version,
             ", ".join(slot.model.providers))
    if not verifier.trusted:
        log.warning("model.trusted_keys is empty: model bundles are accepted UNSIGNED; add the cloud's public key "
                    "(`cloud-selector keys show --out FILE`) to refuse bundles it did not sign")
    elif not verifier.enforcing:
        log.warning("model.require_signature is off: unsigned model bundles are accepted")
    source = open_source(source_spec(config))
    p = config.policy
    recent = RecentFrames(capacity=p.repeat_memory, threshold=p.repeat_distance,
                          embedding_threshold=p.repeat_embedding_distance)
    spool = Spool(state_dir / "spool.sqlite", synchronous=config.spool.synchronous,
                  cap_bytes=int(config.spool.cap_mb * 1024 * 1024))
    channel = cloud_channel(config)
    health = HealthMonitor()
    agent = Agent(device_id=config.device.id, source=source, slot=slot, policy=KeepPolicy(config.policy_config()),
                  spool=spool, jpeg_quality=config.upload.jpeg_quality, max_side=config.upload.max_side,
                  embedding_encoding=config.upload.embedding, recent=recent if recent.enabled else None, health=health)
    uploader = Uploader(channel, spool, window=config.upload.window, ack_timeout_s=config.upload.ack_timeout_s)
    heartbeat = Heartbeat(channel, agent, uploader, interval_s=config.cloud.heartbeat_interval_s)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # `systemctl kill -s USR1 edge-agent` keeps the next frame (reason "manual").
    signal.signal(signal.SIGUSR1, lambda *_: agent.request_manual())
    metrics = None
    if config.metrics.port:
        metrics = MetricsServer(config.metrics.address, config.metrics.port,
                                lambda: agent_samples(snapshot(agent, uploader)))
        metrics.start()
        log.info("metrics on http://%s:%d/metrics", config.metrics.address, metrics.port)
    workers = [threading.Thread(target=uploader.run, args=(stop,), name="uploader", daemon=True),
               threading.Thread(target=heartbeat.run, args=(stop,), name="heartbeat", daemon=True)]
    if config.cloud.watch_models:
        updater = ModelUpdater(channel, device_id=config.device.id, models_dir=models_dir, slot=slot,
                               load_model=lambda path: LoadedModel(path, settings=provider_settings(config)),
                               release_channel=config.cloud.release_channel, verifier=verifier,
                               max_bundle_bytes=int(config.model.max_bundle_mb * 1024 * 1024), health=health,
                               health_policy=HealthPolicy(config.model.health_frames, config.model.health_timeout_s,
                                                          config.model.max_latency_ratio),
                               crash_at=crash_at)
        workers.append(threading.Thread(target=updater.run, args=(stop,), name="updater", daemon=True))
    for worker in workers:
        worker.start()
    try:
        agent.run(stop)
        deadline = time.monotonic() + drain_timeout_s
        while not stop.is_set() and spool.stats().depth and time.monotonic() < deadline:
            stop.wait(0.2)
    finally:
        stop.set()
        heartbeat.beat()
        for worker in workers:
            worker.join(timeout=5)
        channel.close()
        if metrics is not None:
            metrics.stop()
        stats = spool.stats()
        spool.close()
    log.info("stopped: %d frames seen, %d kept, %d acked, %d still spooled, %d evicted",
             agent.stats.frames_seen, agent.stats.frames_kept, uploader.acked, stats.depth, stats.evicted_total)
    return 0


def doctor(config: AgentConfig) -> int:
    """Check model, signature, source, server, credentials, clock and disk; print what is wrong in
    plain words."""
    results = [doctor_checks.check_model(Path(config.model.bundle_dir), list(config.model.providers),
                                         settings=provider_settings(config)),
               doctor_checks.check_signature(Path(config.model.bundle_dir), bundle_verifier(config))]

    def read_one_frame() -> tuple[int, int]:
        stop = threading.Event()
        for frame in open_source(source_spec(config)).frames(stop, None):
            stop.set()
            return frame.image.shape[1], frame.image.shape[0]
        raise SourceError("the source opened but gave no frame")

    results.append(doctor_checks.check_source(read_one_frame))
    try:
        channel = cloud_channel(config)
    except TransportConfigError as exc:
        results.append(doctor_checks.CheckResult("server", False, str(exc), "fix the [cloud] tls_* or [device] token keys"))
        server_time = None
    else:
        with channel:
            server, creds, server_time = doctor_checks.check_cloud(channel, config.device.id)
        results += [server, creds]
        if credentials(config) is None:
            results.append(doctor_checks.CheckResult(
                "token", False, "no device.token or device.token_file is set",
                "enroll with `cloud-selector devices add NAME` and put the token in the config"))
    results.append(doctor_checks.check_clock(server_time, int(time.time() * 1000)))
    results.append(doctor_checks.check_disk(Path(config.device.state_dir), int(config.spool.cap_mb * 1024 * 1024)))
    print(doctor_checks.render_report(results))
    return doctor_checks.exit_code(results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Score camera frames on the device with an ONNX model, keep the informative ones in a durable "
                    "outbox, upload them to cloud-selector over gRPC, and hot-swap verified model bundles.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: the config's log.level, INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the agent until the source ends (or forever with source.follow)",
                           description="Run the agent. SIGTERM/Ctrl-C stop it cleanly; unsent frames stay in the "
                                       "outbox and go out on the next start.")
    p_run.add_argument("--config", required=True, type=Path, help="agent TOML file (see `edge-agent config template`)")
    p_run.add_argument("--drain-timeout", type=float, default=30.0,
                       help="when the source ends, wait up to this many seconds for the outbox to empty (default 30)")
    p_doctor = sub.add_parser("doctor", help="check model, signature, camera, server, credentials, clock and disk",
                              description="Validate the config file, then check in turn: the model bundle loads and "
                                          "runs (and on which execution providers), it is signed by a key in "
                                          "model.trusted_keys, the source gives a frame, the "
                                          "cloud answers, it accepts this device's credentials, the clock agrees "
                                          "with the cloud's, and the state directory is writable with room for the "
                                          "spool cap. Prints one line per check with what to do about failures; "
                                          "exits 0 when all pass, 1 when any fails, 2 for an unusable config.")
    p_doctor.add_argument("--config", required=True, type=Path, help="agent TOML file")
    p_cfg = sub.add_parser("config", help="print a documented config file with every key at its default",
                           description="Print a TOML file listing every configuration key with its documentation "
                                       "and default; start your agent.toml from it.")
    p_cfg.add_argument("action", choices=["template", "reference"],
                       help="template: the documented TOML; reference: the same keys as a Markdown table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            print(template() if args.action == "template" else reference_markdown())
            return 0
        config = load_config(args.config)
        setup_logging(args.log_level or config.log.level.upper(), config.log.format)
        if args.command == "doctor":
            return doctor(config)
        return run(config, drain_timeout_s=args.drain_timeout)
    except (ConfigError, BundleError, ModelStoreError, SigningError, SourceError, TransportConfigError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
