"""The whole flywheel on Fashion-MNIST: seed model, simulated cameras, rounds of upload ->
select -> oracle labels -> retrain -> evaluation gate -> staged rollout -> hot-swap, with test
accuracy after every round.

The model is MobileNetV2 with its ImageNet backbone frozen and a linear head retrained each
round (head-only updates: devices fetch the head, not the backbone), or the small CNN trained
from scratch (`--model small_cnn`). A labeled held-out set (20 images of each seed class) is
made once; each new version must not be worse on it than the released one, and passing
versions reach the cameras through a staged rollout (one camera first, then all) of signed
bundles that the agents verify against the cloud's public key.

The cloud selector (gRPC service) and each edge agent run as separate processes, exactly as
deployed; this orchestrator plays the role of the operator and the labeling team, calling the
same library functions that `cloud-selector select|labels|train` call.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cloud_selector.auth import enroll_device
from cloud_selector.cli import Services, open_services
from cloud_selector.keys import KEYS_DIR, PUBLIC_KEY_FILE
from cloud_selector.dedup import DEFAULT_APPEARANCE_THRESHOLD
from cloud_selector.label_queue import export_queue, import_labels
from cloud_selector.evaluation import GatePolicy
from cloud_selector.promotion import ReleasePolicy
from cloud_selector.releases import Releases
from cloud_selector.retrain import TrainerChoice, retrain
from cloud_selector.rollouts import AbortCriteria, running_rollout
from cloud_selector.rounds import RoundConfig, run_round
from cloud_selector.trainer import TrainConfig
from edge_agent.runtime import LoadedModel, ProviderSettings
from flywheel_demo import processes
from flywheel_demo.datasets import FASHION_MNIST_DIR, Dataset, load_fashion_mnist
from flywheel_demo.streams import StreamPlan, class_mix, load_ground_truth, plan_stream, render_clean, write_stream_video

log = logging.getLogger(__name__)

EVAL_SETTINGS = ProviderSettings(intra_op_threads=0)  # the test-set accuracy: all cores


@dataclass(frozen=True)
class DemoConfig:
    devices: int = 3
    rounds: int = 3
    data_dir: Path = FASHION_MNIST_DIR
    out: Path = Path("runs/demo")
    seed: int = 0
    seed_per_class: int = 10
    holdout_per_class: int = 20  # the gate's fixed held-out set, from the seed classes
    model: str = "mobilenet_v2"  # or small_cnn
    test_size: int = 10_000  # test images accuracy is measured on (the first N of the test split)
    # Absent from the seed labels; the i-th one starts appearing on cameras in round i + 2.
    held_out: tuple[str, ...] = ("Trouser", "Bag")
    items_per_round: int = 150
    select_per_round: int = 50
    fps: float = 10.0
    frame_size: int = 56
    max_per_minute: int = 30
    threshold: float = 0.4
    duplicate_distance: float = DEFAULT_APPEARANCE_THRESHOLD
    timeout_s: float = 300.0


@dataclass
class RoundReport:
    round: int
    model_version: int  # what the devices run after the round (the new version unless the gate refused it)
    accuracy: float
    trained_version: int
    holdout_accuracy: float  # balanced accuracy on the gate's held-out set (what the gate compares)
    outcome: str  # what the gate and the rollout did
    labels_total: int
    frames_seen: int
    frames_uploaded: int
    selected: int
    duplicates: int
    device_models: dict[str, int]
    devices: dict[str, dict] = field(default_factory=dict)


def label_name(class_name: str) -> str:
    """Fashion-MNIST's "T-shirt/top" cannot be a folder name: labels use "T-shirt-top"."""
    return class_name.replace("/", "-")


def accuracy(model: LoadedModel, frames: list[np.ndarray], labels: np.ndarray, class_names: tuple[str, ...]) -> float:
    probs = model.infer_batched(frames).probs
    predicted = [model.classes[i] for i in probs.argmax(axis=1)]
    return float(np.mean([p == label_name(class_names[y]) for p, y in zip(predicted, labels)]))


class Demo:
    def __init__(self, config: DemoConfig):
        self.c = config
        self.out = Path(config.out)
        self.device_ids = [f"cam-{i + 1:02d}" for i in range(config.devices)]
        self.rng = np.random.default_rng(config.seed)
        self.used: set[int] = set()
        self.expected_frames = {d: 0 for d in self.device_ids}
        self.children: list[processes.Child] = []
        self.clock_start = time.time() - 24 * 3600

    # ------------------------------------------------------------------ setup

    def _labeled_folder(self, train: Dataset, name: str, per_class: int) -> Path:
        """root/<class>/<index>.png for `per_class` unused images of each seed class."""
        root = self.out / name
        held = {train.classes.index(name) for name in self.c.held_out}
        for label, name in enumerate(train.classes):
            if label in held:
                continue
            (root / label_name(name)).mkdir(parents=True, exist_ok=True)
            candidates = np.flatnonzero(train.labels == label)
            candidates = np.setdiff1d(candidates, list(self.used))
            for index in self.rng.choice(candidates, per_class, replace=False):
                self.used.add(int(index))
                cv2.imwrite(str(root / label_name(name) / f"{index}.png"), render_clean(train.images[index], self.c.frame_size))
        return root

    def _agent_config(self, device_id: str, port: int, bundle_dir: Path, services: Services) -> Path:
        """Enroll the device (as `cloud-selector devices add` does) and write its agent.toml, the
        token in a 0600 file beside it."""
        device_dir = self.out / "devices" / device_id
        (device_dir / "inbox").mkdir(parents=True, exist_ok=True)
        token_file = device_dir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(enroll_device(services.catalog, device_id).token + "\n")
        path = device_dir / "agent.toml"
        path.write_text(
            f'[device]\nid = "{device_id}"\ntoken_file = "{token_file.resolve()}"\n'
            f'state_dir = "{(device_dir / "state").resolve()}"\n\n'
            f'[source]\ntype = "video"\npath = "{(device_dir / "inbox").resolve()}"\nfollow = true\n'
            f"poll_interval_s = 0.2\n\n"
            f'[model]\nbundle_dir = "{bundle_dir.resolve()}"\n'
            f'trusted_keys = ["{(self.out / "cloud" / KEYS_DIR / PUBLIC_KEY_FILE).resolve()}"]\n'
            f"health_timeout_s = 2.0\n\n"  # between rounds no frames come: judge on the smoke run
            f"[policy]\nmode = \"threshold\"\nthreshold = {self.c.threshold}\nmax_per_minute = {self.c.max_per_minute}\n\n"
            f'[cloud]\naddress = "127.0.0.1:{port}"\nheartbeat_interval_s = 0.5\n'
        )
        return path

    def _retrain(self, services: Services, *, release: ReleasePolicy, name: str = "classifier"):
        small = self.c.model == "small_cnn"
        return retrain(services.catalog, services.blobs, services.registry, name=name,
                       config=TrainConfig(seed=self.c.seed) if small else None,
                       trainer=TrainerChoice(mode="full" if small else "head", arch=self.c.model),
                       gate=GatePolicy(margin=0.01), release=release, actor="demo")

    # ------------------------------------------------------------------ rounds

    def _write_round_videos(self, round_index: int, train: Dataset) -> None:
        n_classes = len(train.classes)
        appeared = {train.classes.index(n) for i, n in enumerate(self.c.held_out) if round_index >= i + 1}
        absent = [train.classes.index(n) for n in self.c.held_out if train.classes.index(n) not in appeared]
        mixes = class_mix(self.c.devices, n_classes, seed=self.c.seed, absent=absent)
        for row in mixes:  # a class that just appeared shows up on every camera
            for label in appeared:
                row[label] = max(row[label], 0.1)
            row /= row.sum()
        for device_id, mix in zip(self.device_ids, mixes):
            items = plan_stream(train.labels, mix, self.c.items_per_round, rng=self.rng, used=self.used)
            plan = StreamPlan(device_id=device_id, round=round_index + 1, items=items, fps=self.c.fps)
            name = f"round-{round_index + 1:02d}.avi"
            staged = write_stream_video(self.out / "staging" / device_id / name, train, plan,
                                        frame_size=self.c.frame_size,
                                        seed=self.c.seed * 1000 + round_index * 100 + self.device_ids.index(device_id))
            # Simulated clock: round r is recorded during hour r, so per-minute budgets see real
            # time spans, not the few seconds it takes to write the file.
            ended = self.clock_start + round_index * 3600 + plan.n_frames / self.c.fps
            os.utime(staged, (ended, ended))
            inbox = self.out / "devices" / device_id / "inbox"
            os.replace(staged, inbox / name)  # the video first, its sidecar (completion marker) last
            os.replace(staged.with_suffix(".json"), (inbox / name).with_suffix(".json"))
            self.expected_frames[device_id] += plan.n_frames

    def _wait_until(self, services: Services, done, what: str, bar: tqdm | None = None) -> dict[str, dict]:
        deadline = time.monotonic() + self.c.timeout_s
        while True:
            for child in self.children:
                child.check_alive()
            fleet = {d["id"]: d for d in services.catalog.devices()}
            if bar is not None:
                bar.n = sum(min(fleet.get(d, {}).get("frames_seen", 0), self.expected_frames[d]) for d in self.device_ids)
                bar.refresh()
            if all(d in fleet and done(d, fleet[d]) for d in self.device_ids):
                return fleet
            if time.monotonic() > deadline:
                raise processes.ProcessError(f"timed out after {self.c.timeout_s:.0f}s waiting for {what}; "
                                             f"see logs in {self.out / 'logs'}")
            time.sleep(0.2)

    def _oracle_labels(self, services: Services, class_names: tuple[str, ...], round_no: int) -> int:
        """Label the queue from ground truth, through the same files a labeling team uses: the
        queue exported as CSV (which marks it in_labeling for "oracle"), a labels CSV filled in
        from each frame's ground truth, imported like any labeler's. Held-out classes are new
        when they first appear, so the import allows new classes (the next model grows its head)."""
        queue_csv = self.out / "labeling" / f"queue-{round_no:02d}.csv"
        labels_csv = self.out / "labeling" / f"labels-{round_no:02d}.csv"
        queue_csv.parent.mkdir(parents=True, exist_ok=True)
        exported = export_queue(services.catalog, services.blobs, "csv", queue_csv, assignee="oracle")
        # Where each frame came from (device, video, frame index) is candidate metadata, not a CSV column.
        rows = {r.id: r for r in services.catalog.candidates(ids=exported.candidate_ids)}
        truth_cache: dict[Path, dict] = {}
        with open(queue_csv, newline="") as f, open(labels_csv, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["candidate_id", "label"])
            for queued in csv.DictReader(f):
                row = rows[queued["candidate_id"]]
                sidecar = (self.out / "devices" / row.device_id / "inbox" / row.extra["source"]).with_suffix(".json")
                truth = truth_cache.setdefault(sidecar, load_ground_truth(sidecar))
                label, _item = truth[int(row.extra["frame_index"])]
                writer.writerow([row.id, label_name(class_names[label])])
        result = import_labels(services.catalog, "csv", labels_csv, allow_new_classes=True, annotator="oracle")
        if result.refused:  # the oracle writes only known ids and clean labels: a refusal is a bug
            raise RuntimeError(f"the oracle's labels were refused: {result.summary()}")
        return len(result.labels)

    def run(self) -> dict:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        train, test = load_fashion_mnist("train", self.c.data_dir), load_fashion_mnist("test", self.c.data_dir)
        test = Dataset(test.images[:self.c.test_size], test.labels[:self.c.test_size], test.classes)
        test_frames = [render_clean(img, self.c.frame_size) for img in test.images]
        services = open_services(self.out / "cloud")
        from cloud_selector.labels import import_image_folder

        imported = import_image_folder(services.catalog, services.blobs,
                                       self._labeled_folder(train, "seed", self.c.seed_per_class))
        holdout = import_image_folder(services.catalog, services.blobs,
                                      self._labeled_folder(train, "holdout", self.c.holdout_per_class))
        Releases(services.catalog).set_holdout(holdout.labeled)
        print(f"seed: {imported.imported} labeled images of {len(train.classes) - len(self.c.held_out)} classes "
              f"(held out: {', '.join(self.c.held_out)}); gate's held-out set: {len(holdout.labeled)} images",
              flush=True)
        v1 = self._retrain(services, name=f"fashion-{self.c.model}", release=ReleasePolicy(action="promote"))
        v1_bundle = services.registry.local_bundle(v1.manifest.version)
        initial_accuracy = accuracy(LoadedModel(v1_bundle, settings=EVAL_SETTINGS), test_frames, test.labels,
                                    train.classes)
        print(f"model v{v1.manifest.version}: test accuracy {initial_accuracy:.3f}", flush=True)

        logs = self.out / "logs"
        server = processes.start("cloud-selector", "cloud_selector",
                                 ["--data-dir", str(self.out / "cloud"), "serve", "--grpc-address", "127.0.0.1:0",
                                  "--port-file", str(self.out / "grpc.port"), "--watch-poll", "0.3",
                                  "--rollout-poll", "0.3"],
                                 logs / "cloud-selector.log")
        self.children.append(server)
        try:
            port = int(processes.wait_for_file(self.out / "grpc.port", server, timeout_s=60))
            for device_id in self.device_ids:
                config = self._agent_config(device_id, port, v1_bundle, services)
                self.children.append(processes.start(device_id, "edge_agent", ["run", "--config", str(config)],
                                                     logs / f"{device_id}.log"))
            reports = []
            previous = {d: {"frames_seen": 0, "candidates_acked": 0} for d in self.device_ids}
            for r in range(self.c.rounds):
                reports.append(self._round(r, services, train, test_frames, test, previous))
        finally:
            processes.stop_all(self.children)
        report = {
            "initial_accuracy": initial_accuracy,
            "initial_model_version": v1.manifest.version,
            "seed_labels": imported.imported + imported.already_present,
            "rounds": [asdict(r) for r in reports],
            "wall_seconds": round(time.monotonic() - started, 1),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.c).items()},
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=2))
        return report

    def _round(self, r: int, services: Services, train: Dataset, test_frames, test: Dataset,
               previous: dict[str, dict]) -> RoundReport:
        round_no = r + 1
        self._write_round_videos(r, train)
        total = sum(self.expected_frames.values()) - sum(p["frames_seen"] for p in previous.values())
        with tqdm(total=sum(self.expected_frames.values()), initial=sum(p["frames_seen"] for p in previous.values()),
                  desc=f"round {round_no}: frames", unit="frame", leave=False) as bar:
            fleet = self._wait_until(
                services, lambda d, s: s["frames_seen"] >= self.expected_frames[d] and s["spool_depth"] == 0,
                f"{total} frames to be scored and uploaded", bar)
        selection = run_round(services.catalog, services.blobs, services.registry, RoundConfig(
            n_samples=self.c.select_per_round, duplicate_distance=self.c.duplicate_distance))
        self._oracle_labels(services, train.classes, round_no)
        # One camera first, then all; any failure aborts and sends the canary back.
        trained = self._retrain(services, release=ReleasePolicy(
            action="rollout", stages=(100 // self.c.devices or 1, 100),
            criteria=AbortCriteria(max_failure_fraction=0.0, min_devices=1, device_timeout_s=120)))
        self._wait_until(services, lambda d, s: running_rollout(services.catalog, "") is None, "the rollout to finish")
        version = Releases(services.catalog).channel_version()
        fleet_after = self._wait_until(services, lambda d, s: s["model_version"] == version,
                                       f"every device to run model v{version}")
        model = LoadedModel(services.registry.local_bundle(version), settings=EVAL_SETTINGS)
        acc = accuracy(model, test_frames, test.labels, train.classes)
        selected_by_device = {}
        for row in services.catalog.candidates(ids=selection.selected):
            selected_by_device[row.device_id] = selected_by_device.get(row.device_id, 0) + 1
        devices = {}
        for d in self.device_ids:
            devices[d] = {
                "frames_seen": fleet[d]["frames_seen"] - previous[d]["frames_seen"],
                "frames_uploaded": fleet[d]["candidates_acked"] - previous[d]["candidates_acked"],
                "selected": selected_by_device.get(d, 0),
                "model_version": fleet_after[d]["model_version"],
            }
            previous[d] = {"frames_seen": fleet[d]["frames_seen"], "candidates_acked": fleet[d]["candidates_acked"]}
        report = RoundReport(
            round=round_no, model_version=version, accuracy=acc, trained_version=trained.manifest.version,
            holdout_accuracy=trained.decision.candidate.balanced_accuracy, outcome=trained.outcome,
            labels_total=trained.labels,
            frames_seen=sum(v["frames_seen"] for v in devices.values()),
            frames_uploaded=sum(v["frames_uploaded"] for v in devices.values()),
            selected=len(selection.selected), duplicates=selection.duplicates,
            device_models={d: v["model_version"] for d, v in devices.items()}, devices=devices)
        print_round(report)
        return report


def print_round(r: RoundReport) -> None:
    print(f"\nround {r.round}: trained v{r.trained_version} (held-out balanced accuracy {r.holdout_accuracy:.3f}): "
          f"{r.outcome}; devices run v{r.model_version}, test accuracy {r.accuracy:.3f}, labels {r.labels_total}, "
          f"{r.duplicates} near-duplicates dropped in the cloud")
    print(f"  {'device':<8} {'frames seen':>11} {'uploaded':>9} {'selected':>9} {'model':>6}")
    for d, v in r.devices.items():
        print(f"  {d:<8} {v['frames_seen']:>11} {v['frames_uploaded']:>9} {v['selected']:>9} {'v' + str(v['model_version']):>6}")
    print(f"  {'total':<8} {r.frames_seen:>11} {r.frames_uploaded:>9} {r.selected:>9}", flush=True)
