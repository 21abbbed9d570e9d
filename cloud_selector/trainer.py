"""Train classifiers on labeled frames: the loop, full fine-tuning, checkpoints, bundle writing.

Three trainer modes make a device bundle from labeled BGR frames; the one entry point,
`cloud_selector.head_trainer.train_bundle`, dispatches between them:

- ``head``: keep a parent model's backbone, retrain a linear head on its embeddings, compose
  one ONNX graph (`cloud_selector.head_trainer`). Seconds; only small files change.
- ``full``: train a whole network, SmallCNN from scratch or MobileNetV2 from ImageNet weights
  with a new head (`train_classifier`, here), then export. MobileNetV2 at 96 px on 300 labels:
  ~25 s with 14 of its 19 blocks frozen, ~45 s with none (two CPU cores).
- ``external``: run the user's own training command and check the ONNX it writes
  (`cloud_selector.external_trainer`).

This module is the layer they share: the loop, full-mode training and its checkpoint, and
`write_model_bundle` (novelty bank capped and calibrated, manifest, write, verify). The older
`build_bundle` (one model.onnx file, SmallCNN) stays for its callers.

The loop (`fit`) reads top to bottom: inverse-frequency class weights (a few labels of a
rare class would otherwise be drowned out), AdamW, cosine learning-rate decay over the most
epochs allowed, and early stopping on a stratified validation split: stop after `patience`
epochs without a better validation score (higher accuracy, or equal accuracy and a loss lower
by `min_delta`), and keep the best epoch's weights. Sets too small to hold out
`MIN_VALIDATION` frames train every epoch on everything. What holding out costs: SmallCNN on
100 / 300 / 1000 Fashion-MNIST labels scored 0.65 / 0.74 / 0.80 on 1000 held-out frames with
the default split and patience, 0.67 / 0.75 / 0.83 with `patience=0` (30 epochs on all labels);
early stopping earns its keep where the right epoch count is unknown (fine-tuning MobileNetV2).
Cost: SmallCNN on ~300 grey 28x28 frames, ~0.09 s an epoch on two CPU cores.

Determinism: the same data, config and seed give bit-identical weights. Torch's global state
(seed, thread count, deterministic algorithms) is set for the duration of a train and then
restored, so training from several threads of one process at once is not supported.

Errors (one tree; third-party errors are translated where they happen):

    TrainingError (ValueError)     bad training data, config, mode or parent
    ExportError                    export, composition, onnx.checker, ONNX Runtime, parity, or
                                   a model whose outputs do not fit the classes
    ExternalTrainerError           the user's command failed, timed out or wrote nothing
     └── ExternalTrainerTimeout
    edge_agent.bundle.BundleError  writing or verifying the bundle
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cloud_selector import mobilenet
from cloud_selector.cnn import SmallCNN
from cloud_selector.onnx_compose import (  # noqa: F401  (re-exported for existing callers)
    INPUT_NAME,
    OPSET,
    OUTPUT_NAMES,
    ExportError,
    ExportReport,
    embed_frames,
    export_onnx,
)
from edge_agent.bundle import BundleError, InputSpec, Manifest, verify_bundle, write_bundle
from edge_agent.preprocess import preprocess
from edge_agent.scoring import calibrate_bank

log = logging.getLogger(__name__)

ARCHES = ("small_cnn", "mobilenet_v2")
SMALL_CNN_SPEC = InputSpec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,))
MIN_VALIDATION = 10  # fewer held-out frames than this make a stopping signal that is mostly noise


class TrainingError(ValueError):
    """The training data, configuration, mode or parent cannot be trained on."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # the most epochs; early stopping may end sooner
    batch_size: int = 32
    lr: float = 3e-3  # peak; cosine decay per step over `epochs`
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2  # fixed, not os.cpu_count(): float sums depend on the thread split
    embedding_dim: int = 64  # small_cnn only; MobileNetV2's is 1280
    augment: bool = True  # random shifts of up to `max_shift` pixels (image models only)
    max_shift: int = 2
    balance_classes: bool = True  # inverse-frequency class weights in the loss
    val_fraction: float = 0.2  # stratified hold-out for early stopping; 0 = train on everything
    patience: int = 5  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 1e-3  # at equal validation accuracy, the loss must drop by more to count
    freeze_blocks: int = 0  # mobilenet_v2: leading `features` blocks kept frozen (19 = all)

    def validate(self) -> None:
        at_least = {"epochs": 1, "batch_size": 1, "threads": 1, "embedding_dim": 1, "max_shift": 0,
                    "patience": 0, "freeze_blocks": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise TrainingError(f"bad TrainConfig: {name} must be >= {low}, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.min_delta >= 0 and 0 <= self.val_fraction < 1):
            raise TrainingError("bad TrainConfig: need lr > 0, weight_decay >= 0, min_delta >= 0, 0 <= val_fraction < 1")


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic, fixed-thread torch for the duration of a train, then restore."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state survives
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(old_deterministic)
            torch.set_num_threads(old_threads)


def check_data(frames_bgr: Sequence[np.ndarray], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Labels as int64, or TrainingError naming the first problem with the frames or labels."""
    y = check_labels(labels, len(frames_bgr), num_classes)
    for i, frame in enumerate(frames_bgr):
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
            raise TrainingError(f"frame {i} is not a 2-D or 3-D image array")
    return y


def check_labels(labels: Sequence[int], n: int, num_classes: int) -> np.ndarray:
    """Labels for n inputs as int64, or TrainingError naming the first problem."""
    if n == 0:
        raise TrainingError("no training frames")
    if n != len(labels):
        raise TrainingError(f"{n} frames but {len(labels)} labels")
    if num_classes < 1:
        raise TrainingError(f"num_classes must be >= 1, got {num_classes}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TrainingError(f"labels must be a flat sequence of integers, got dtype {y.dtype}, shape {y.shape}")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise TrainingError(f"label {int(y[bad[0]])} at index {int(bad[0])} is outside [0, {num_classes})")
    return y


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = np.count_nonzero(counts)
    # N / (K * count): a balanced set gets all-ones; absent classes never appear in the loss.
    weights = np.where(counts > 0, len(y) / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, sorted; each class gives round(fraction * count) to
    validation but always keeps at least one for training."""
    val = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        val.extend(members[: min(round(fraction * len(members)), len(members) - 1)])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


def random_shift(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, repeating the border."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@dataclass
class FitResult:
    epochs: int  # epochs run
    best_epoch: int  # the epoch whose weights were kept (the last one without validation)
    losses: list[float]  # mean training loss per epoch (augmented, class-weighted)
    val_losses: list[float] = field(default_factory=list)
    val_accuracy: float | None = None  # at best_epoch; None without a validation split
    stopped_early: bool = False
    n_train: int = 0
    n_val: int = 0


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 256])[0] for i in range(0, len(x), 256)])
    return float(F.cross_entropy(logits, y, weight=weight)), float((logits.argmax(1) == y).float().mean())


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, config: TrainConfig, *,
        augment: Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None = None,
        progress: bool = False, desc: str = "train") -> FitResult:
    """Train `model` (forward returns (logits, embedding)) on inputs `x` and labels `y` in
    place, leaving it in eval mode with the best weights. Call inside `deterministic_torch`."""
    rng = np.random.default_rng(config.seed)  # split, shuffling and shifts; torch's RNG only inits
    train_idx, val_idx = np.arange(len(y)), np.zeros(0, np.int64)
    if config.patience and config.val_fraction:
        train_idx, val_idx = stratified_split(y.numpy(), config.val_fraction, rng)
        if len(val_idx) < MIN_VALIDATION:
            train_idx, val_idx = np.arange(len(y)), np.zeros(0, np.int64)
    x_val, y_val = x[val_idx], y[val_idx]
    weight = class_weights(y[train_idx].numpy(), num_classes) if config.balance_classes else None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * batches_per_epoch)
    result = FitResult(epochs=0, best_epoch=0, losses=[], n_train=len(train_idx), n_val=len(val_idx))
    best_loss, best_state = math.inf, None
    bar = tqdm(total=config.epochs, desc=desc, unit="epoch", disable=not progress)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.from_numpy(rng.permutation(train_idx))
            total = 0.0
            # Near-equal batches rather than a ragged last one: BatchNorm on a batch of one
            # sample gives garbage statistics (or an error at tiny input sizes).
            for idx in torch.tensor_split(order, batches_per_epoch):
                xb = augment(x[idx], rng) if augment is not None else x[idx]
                loss = F.cross_entropy(model(xb)[0], y[idx], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
            result.losses.append(total / len(train_idx))
            result.epochs = epoch
            if not math.isfinite(result.losses[-1]):
                raise TrainingError(f"training loss diverged to {result.losses[-1]} at epoch {epoch}; lower lr")
            bar.update(1)
            if not len(val_idx):
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
                continue
            val_loss, val_acc = _evaluate(model, x_val, y_val, weight)
            result.val_losses.append(val_loss)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
            # Better = more accurate, or as accurate with a lower loss. Loss alone stops too
            # early: on a few hundred labels it rises with overconfidence while accuracy still
            # climbs (a linear head on MobileNetV2 features, 300 labels: 0.77 test accuracy
            # when stopped on loss, 0.79 on accuracy).
            best_acc = result.val_accuracy if result.val_accuracy is not None else -1.0
            if val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss - config.min_delta):
                best_loss, result.best_epoch, result.val_accuracy = val_loss, epoch, val_acc
                # A copy of every tensor: ~9 MB for MobileNetV2, nothing for a linear head.
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch - result.best_epoch >= config.patience:
                result.stopped_early = epoch < config.epochs
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = result.epochs
    model.eval()
    log.debug("fit: %d epochs (best %d), val acc %s", result.epochs, result.best_epoch, result.val_accuracy)
    return result


def make_model(arch: str, num_classes: int, spec: InputSpec, config: TrainConfig) -> torch.nn.Module:
    """A fresh model of a bundled architecture: its forward returns (logits, embedding)."""
    if spec.layout != "NCHW":
        raise TrainingError(f"the bundled architectures take NCHW input; the input spec is {spec.layout}")
    if arch == "small_cnn":
        return SmallCNN(num_classes, spec.channels, config.embedding_dim)
    if arch == "mobilenet_v2":
        if spec.channels != 3:
            raise TrainingError(f"mobilenet_v2 takes 3-channel input; the input spec is {spec.color!r}")
        if config.freeze_blocks > mobilenet.NUM_BLOCKS:
            raise TrainingError(f"bad TrainConfig: freeze_blocks must be <= {mobilenet.NUM_BLOCKS}")
        return mobilenet.pretrained(num_classes, freeze_blocks=config.freeze_blocks)
    raise TrainingError(f"unknown arch {arch!r}; use one of {ARCHES}")


def default_spec(arch: str) -> InputSpec:
    return mobilenet.INPUT_SPEC if arch == "mobilenet_v2" else SMALL_CNN_SPEC


@dataclass
class TrainResult:
    model: torch.nn.Module  # in eval mode, with the best epoch's weights
    epochs: int  # epochs run
    final_loss: float  # mean training loss of the last epoch (augmented, class-weighted)
    train_accuracy: float  # on the whole un-augmented labeled set, eval mode
    seconds: float  # wall time including preprocessing
    losses: list[float] = field(default_factory=list)  # per epoch
    arch: str = "small_cnn"
    fit: FitResult | None = None
    data_sha256: str = ""  # of the preprocessed inputs and labels: what the weights were fit to


def train_classifier(frames_bgr: Sequence[np.ndarray], labels: Sequence[int], num_classes: int, spec: InputSpec,
                     config: TrainConfig = TrainConfig(), progress: bool = False,
                     arch: str = "small_cnn") -> TrainResult:
    """Train a whole network on BGR uint8 frames (full mode); returns the model in eval mode."""
    config.validate()
    y_np = check_data(frames_bgr, labels, num_classes)
    started = time.perf_counter()
    # All frames preprocessed up front: 4 * C * H * W bytes each (110 kB at 3x96x96).
    x, y = torch.from_numpy(preprocess(frames_bgr, spec)), torch.from_numpy(y_np)
    digest = hashlib.sha256(x.numpy())  # hashes the buffer in place: no copy of the inputs
    digest.update(y_np)
    digest = digest.hexdigest()
    shift = (lambda xb, rng: random_shift(xb, config.max_shift, rng)) if config.augment and config.max_shift else None
    with deterministic_torch(config.seed, config.threads):
        model = make_model(arch, num_classes, spec, config)
        fitted = fit(model, x, y, num_classes, config, augment=shift, progress=progress, desc=f"train {arch}")
        _, accuracy = _evaluate(model, x, y, None)
    seconds = time.perf_counter() - started
    log.info("trained %s on %d frames, %d classes: %d epochs (best %d), loss %.4f, train acc %.3f, %.1f s",
             arch, len(y_np), num_classes, fitted.epochs, fitted.best_epoch, fitted.losses[-1], accuracy, seconds)
    return TrainResult(model=model, epochs=fitted.epochs, final_loss=fitted.losses[-1], train_accuracy=accuracy,
                       seconds=seconds, losses=fitted.losses, arch=arch, fit=fitted, data_sha256=digest)


def save_checkpoint(path: Path, result: TrainResult, *, config: TrainConfig, classes: Sequence[str],
                    spec: InputSpec, label_set: dict) -> Path:
    """`path` (torch state_dict, loads with weights_only=True) plus `path`.json: what it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), path)
    meta = {
        "arch": result.arch, "config": asdict(config), "seed": config.seed, "classes": list(classes),
        "input": asdict(spec), "label_set": dict(label_set), "data_sha256": result.data_sha256,
        "epochs_run": result.epochs, "best_epoch": result.fit.best_epoch if result.fit else result.epochs,
        "best_val_accuracy": result.fit.val_accuracy if result.fit else None,
        "train_accuracy": result.train_accuracy, "state_dict_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) as `save_checkpoint` wrote them."""
    path = Path(path)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    return torch.load(path, map_location="cpu", weights_only=True), meta




def cap_bank(bank: np.ndarray, cap: int | None, seed: int = 0) -> np.ndarray:
    """At most `cap` rows, a seeded uniform sample kept in order. Uniform, not k-center: the
    device calibrates novelty against the bank's own leave-one-out distances, and those only
    describe a typical frame's distance to the bank when the bank is a fair sample of it.
    Cost on the wire: 4 * D bytes a row (5 kB at D = 1280, so 2000 rows are ~10 MB)."""
    if cap is None or len(bank) <= cap:
        return bank
    keep = np.sort(np.random.default_rng(seed).choice(len(bank), size=cap, replace=False))
    return np.ascontiguousarray(bank[keep])


def write_model_bundle(out_dir: Path, manifest: Manifest, model_files: dict[str, Path], bank: np.ndarray,
                       workdir: Path) -> Manifest:
    """Write `model_files` plus `bank` as the novelty bank (with its calibration, so devices
    report novelty on one scale across models) into a new bundle at `out_dir`, and verify it.
    `manifest` supplies everything else; its files, embedding_dim and quantiles are filled in."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    bank_path = Path(workdir) / manifest.novelty_bank_file
    np.save(bank_path, bank)
    manifest = Manifest(**{**manifest.__dict__, "embedding_dim": int(bank.shape[1]),
                           "novelty_quantiles": calibrate_bank(bank, k=manifest.novelty_k)})
    written = write_bundle(out_dir, manifest, {**model_files, manifest.novelty_bank_file: bank_path})
    verify_bundle(out_dir)  # what a device checks first; cheap, and catches a torn write here
    log.info("wrote bundle %s v%d to %s (bank %s)", manifest.name, manifest.version, out_dir, bank.shape)
    return written


def build_bundle(out_dir: Path, *, model: torch.nn.Module, name: str, version: int, parent_version: int,
                 classes: Sequence[str], spec: InputSpec, bank_frames_bgr: Sequence[np.ndarray],
                 label_set: dict, metrics: dict, workdir: Path, novelty_k: int = 1) -> Manifest:
    """Export `model` as one model.onnx, embed the labeled frames through it as the (uncapped)
    novelty bank, write and verify a bundle at `out_dir` (which must not exist)."""
    out_dir, workdir = Path(out_dir), Path(workdir)
    if out_dir.exists():  # fail before the export work, not after it
        raise BundleError(f"bundle directory {out_dir} already exists")
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / "model.onnx"
    # Parity on real frames; zeros only when there are none (a bank-less first model).
    sample = (preprocess(bank_frames_bgr[:64], spec) if len(bank_frames_bgr)
              else np.zeros((2, spec.channels, spec.height, spec.width), np.float32))
    export_onnx(model, spec, onnx_path, sample)
    probs, bank = embed_frames(onnx_path, spec, bank_frames_bgr)
    if probs.shape[1] != len(classes):
        raise ExportError(f"model has {probs.shape[1]} outputs but {len(classes)} classes were given")
    manifest = Manifest(name=name, version=version, parent_version=parent_version, classes=tuple(classes),
                        input=spec, label_set=dict(label_set), metrics=dict(metrics), novelty_k=novelty_k,
                        created_at=now_iso())
    return write_model_bundle(out_dir, manifest, {manifest.model_file: onnx_path}, bank, workdir)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
