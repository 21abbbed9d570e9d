"""`edge-agent`: the device agent's command line. All wiring happens here."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

from edge_agent import __version__
from edge_agent.agent import Agent, Heartbeat
from edge_agent.appearance import RecentFrames
from edge_agent.bundle import BundleError
from edge_agent.config import AgentConfig, ConfigError, load_config, template
from edge_agent.policy import ThresholdPolicy
from edge_agent.runtime import LoadedModel
from edge_agent.sources import ImageFolderSource, SourceError, VideoFileSource
from edge_agent.spool import Spool
from edge_agent.transport import open_channel
from edge_agent.updater import ModelSlot, ModelUpdater, installed_bundle
from edge_agent.uploader import Uploader
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger("edge_agent")


def _load_initial_model(config: AgentConfig, models_dir: Path) -> LoadedModel:
    """The newer of the configured bundle and the last installed one."""
    def load(path: Path) -> LoadedModel:
        return LoadedModel(path, providers=config.model.providers, intra_op_threads=config.model.intra_op_threads)

    configured = load(Path(config.model.bundle_dir))
    installed_dir = installed_bundle(models_dir)
    if installed_dir is None:
        return configured
    try:
        installed = load(installed_dir)
    except BundleError as exc:
        log.warning("installed bundle %s is unusable (%s); using %s", installed_dir, exc, config.model.bundle_dir)
        return configured
    return installed if installed.version > configured.version else configured


def run(config: AgentConfig, *, drain_timeout_s: float) -> int:
    state_dir = Path(config.device.state_dir)
    models_dir = state_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    slot = ModelSlot(_load_initial_model(config, models_dir))
    log.info("device %s running model %s v%d", config.device.id, slot.model.manifest.name, slot.version)
    if config.source.type == "video":
        source = VideoFileSource(Path(config.source.path), follow=config.source.follow,
                                 poll_interval_s=config.source.poll_interval_s)
    else:
        source = ImageFolderSource(Path(config.source.path))
    policy = ThresholdPolicy(config.policy_config())
    recent = RecentFrames(capacity=config.policy.repeat_memory, threshold=config.policy.repeat_distance)
    spool = Spool(state_dir / "spool.sqlite", synchronous=config.spool.synchronous)
    channel = open_channel(config.cloud.address, max_message_bytes=int(config.cloud.max_message_mb * 1024 * 1024))
    agent = Agent(device_id=config.device.id, source=source, slot=slot, policy=policy, spool=spool,
                  jpeg_quality=config.upload.jpeg_quality, recent=recent)
    uploader = Uploader(channel, spool, window=config.upload.window)
    heartbeat = Heartbeat(channel, agent, lambda: uploader.acked, interval_s=config.cloud.heartbeat_interval_s)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workers = [threading.Thread(target=uploader.run, args=(stop,), name="uploader", daemon=True),
               threading.Thread(target=heartbeat.run, args=(stop,), name="heartbeat", daemon=True)]
    if config.cloud.watch_models:
        updater = ModelUpdater(channel, device_id=config.device.id, models_dir=models_dir, slot=slot,
                               load_model=lambda p: LoadedModel(p, providers=config.model.providers,
                                                                intra_op_threads=config.model.intra_op_threads),
                               release_channel=config.cloud.release_channel)
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
        left = spool.stats().depth
        spool.close()
    log.info("stopped: %d frames seen, %d kept, %d acked, %d still spooled",
             agent.stats.frames_seen, agent.stats.frames_kept, uploader.acked, left)
    return 0


def check(config: AgentConfig) -> int:
    """Load the model and reach the cloud once; one line per problem."""
    LoadedModel(Path(config.model.bundle_dir), providers=config.model.providers)
    channel = open_channel(config.cloud.address)
    try:
        pb_grpc.FleetStub(channel).Heartbeat(pb.HeartbeatRequest(device_id=config.device.id), timeout=5)
    except grpc.RpcError as exc:
        raise ConnectionError(f"cannot reach the cloud at {config.cloud.address}: {exc.code().name}") from exc
    finally:
        channel.close()
    print(f"ok: model loads, cloud at {config.cloud.address} answers")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Score camera frames on the device with an ONNX model, keep the informative ones in a durable "
                    "outbox, upload them to cloud-selector over gRPC, and hot-swap verified model bundles.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the agent until the source ends (or forever with source.follow)",
                           description="Run the agent. SIGTERM/Ctrl-C stop it cleanly; unsent frames stay in the "
                                       "outbox and go out on the next start.")
    p_run.add_argument("--config", required=True, type=Path, help="agent TOML file (see `edge-agent config template`)")
    p_run.add_argument("--drain-timeout", type=float, default=30.0,
                       help="when the source ends, wait up to this many seconds for the outbox to empty (default 30)")
    p_check = sub.add_parser("check", help="validate the config, load the model and reach the cloud once",
                             description="Validate the config file (unknown keys, types, env overrides), load and "
                                         "smoke-run the model bundle, and send one heartbeat to the cloud. Exits 0 "
                                         "when all three work, 2 with a one-line reason otherwise.")
    p_check.add_argument("--config", required=True, type=Path, help="agent TOML file")
    p_cfg = sub.add_parser("config", help="print a documented config file with every key at its default",
                           description="Print a TOML file listing every configuration key with its documentation "
                                       "and default; start your agent.toml from it.")
    p_cfg.add_argument("action", choices=["template"], help="template: print the documented TOML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "config":
            print(template())
            return 0
        config = load_config(args.config)
        if args.command == "check":
            return check(config)
        return run(config, drain_timeout_s=args.drain_timeout)
    except (ConfigError, BundleError, SourceError, ConnectionError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
