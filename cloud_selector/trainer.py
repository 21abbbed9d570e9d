"""Train a small classifier on the labeled frames and package it as a device bundle.

Read top to bottom, this is the whole path from labels to a bundle a device will accept:

1. `train_classifier` preprocesses the BGR frames with `edge_agent.preprocess.preprocess`, the
   very function devices run, so training and inference cannot drift apart. It trains a
   `SmallCNN` with AdamW and cross-entropy, weighting each class by its inverse frequency (a
   few labels of a rare class would otherwise be drowned out) and shifting images by a couple
   of pixels (cheap augmentation that fights overfitting on a few hundred labels). It runs a
   fixed number of epochs with the learning rate decaying to zero on a cosine; no early
   stopping, because at a few hundred labels there is no held-out set to stop on.
   Cost: ~300 grey 28x28 images, 30 epochs, take about 2.5 to 3 s on two idle CPU cores
   (~0.09 s an epoch); several times that when other processes share the cores.
2. `export_onnx` writes the model as ONNX (opset 17, dynamic batch, outputs `logits` and
   `embedding`), runs `onnx.checker`, and compares ONNX Runtime with torch on a real batch;
   a model that disagrees is never written to its final path.
3. `embed_frames` runs an exported model with ONNX Runtime: class probabilities + embeddings.
4. `build_bundle` exports, embeds the labeled set through the exported ONNX as the novelty
   bank (the device computes novelty against exactly these vectors), and writes the bundle.

Determinism: the same data, config and seed give bit-identical weights. Torch's global state
(seed, thread count, deterministic algorithms) is set for the duration of a train and then
restored, so training from several threads of one process at once is not supported.

Errors: `TrainingError` (a ValueError) for bad training data or config, `ExportError` when
export, the ONNX check or the parity check fails; `edge_agent.bundle.BundleError` from writing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cloud_selector.cnn import SmallCNN
from edge_agent.bundle import BundleError, InputSpec, Manifest, verify_bundle, write_bundle
from edge_agent.preprocess import preprocess
from edge_agent.scoring import calibrate_bank, softmax

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "embedding")
OPSET = 17


class TrainingError(ValueError):
    """The training data or configuration cannot be trained on."""


class ExportError(Exception):
    """ONNX export, the ONNX checker, or the torch vs ONNX Runtime parity check failed."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # fixed count: no early stopping, the learning rate decays to 0 instead
    batch_size: int = 32
    lr: float = 3e-3  # peak; cosine decay per step
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2  # fixed, not os.cpu_count(): float sums depend on the thread split
    embedding_dim: int = 64
    augment: bool = True  # random shifts of up to `max_shift` pixels
    max_shift: int = 2
    balance_classes: bool = True  # inverse-frequency class weights in the loss

    def validate(self) -> None:
        at_least = {"epochs": 1, "batch_size": 1, "threads": 1, "embedding_dim": 1, "max_shift": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise TrainingError(f"bad TrainConfig: {name} must be >= {low}, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise TrainingError(f"bad TrainConfig: lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


@dataclass
class TrainResult:
    model: SmallCNN  # in eval mode
    epochs: int  # epochs run
    final_loss: float  # mean training loss of the last epoch (augmented, class-weighted)
    train_accuracy: float  # on the un-augmented training set, eval mode
    seconds: float  # wall time including preprocessing
    losses: list[float] = field(default_factory=list)  # per epoch


@dataclass(frozen=True)
class ExportReport:
    path: Path
    size_bytes: int
    max_abs_diff_logits: float
    max_abs_diff_embedding: float


@contextlib.contextmanager
def _torch_state(seed: int, threads: int) -> Iterator[None]:
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


def _check_data(frames_bgr: Sequence[np.ndarray], labels: Sequence[int], num_classes: int) -> np.ndarray:
    if len(frames_bgr) == 0:
        raise TrainingError("no training frames")
    if len(frames_bgr) != len(labels):
        raise TrainingError(f"{len(frames_bgr)} frames but {len(labels)} labels")
    if num_classes < 1:
        raise TrainingError(f"num_classes must be >= 1, got {num_classes}")
    for i, frame in enumerate(frames_bgr):
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
            raise TrainingError(f"frame {i} is not a 2-D or 3-D image array")
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise TrainingError(f"labels must be a flat sequence of integers, got dtype {y.dtype}, shape {y.shape}")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise TrainingError(f"label {int(y[bad[0]])} at index {int(bad[0])} is outside [0, {num_classes})")
    return y


def _random_shift(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, repeating the border."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = np.count_nonzero(counts)
    # N / (K * count): a balanced set gets all-ones; absent classes never appear in the loss.
    weights = np.where(counts > 0, len(y) / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def train_classifier(frames_bgr: Sequence[np.ndarray], labels: Sequence[int], num_classes: int, spec: InputSpec,
                     config: TrainConfig = TrainConfig(), progress: bool = False) -> TrainResult:
    """Train a SmallCNN from scratch on BGR uint8 frames; returns the model in eval mode."""
    config.validate()
    y_np = _check_data(frames_bgr, labels, num_classes)
    started = time.perf_counter()
    x, y, n = torch.from_numpy(preprocess(frames_bgr, spec)), torch.from_numpy(y_np), len(y_np)
    rng = np.random.default_rng(config.seed)  # shuffling and shifts; torch's RNG only inits

    with _torch_state(config.seed, config.threads):
        model = SmallCNN(num_classes, spec.channels, config.embedding_dim)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        batches_per_epoch = math.ceil(n / config.batch_size)
        # Cosine decay to 0 over the whole run: the last weights are settled ones, so the model
        # we ship does not depend on where a noisy constant-lr run happened to stop.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * batches_per_epoch)
        weight = _class_weights(y_np, num_classes) if config.balance_classes else None
        losses: list[float] = []
        bar = tqdm(total=config.epochs, desc="train", unit="epoch", disable=not progress)
        try:
            for epoch in range(config.epochs):
                model.train()
                order = torch.from_numpy(rng.permutation(n))
                total = 0.0
                # Near-equal batches rather than a ragged last one: BatchNorm on a batch of
                # one sample gives garbage statistics (or an error at tiny input sizes).
                for idx in torch.tensor_split(order, batches_per_epoch):
                    xb = x[idx]
                    if config.augment and config.max_shift > 0:
                        xb = _random_shift(xb, config.max_shift, rng)
                    logits, _ = model(xb)
                    loss = F.cross_entropy(logits, y[idx], weight=weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += loss.item() * len(idx)
                losses.append(total / n)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                log.debug("epoch %d loss %.5f", epoch + 1, losses[-1])
                if not math.isfinite(losses[-1]):
                    raise TrainingError(f"training loss diverged to {losses[-1]} at epoch {epoch + 1}; lower lr")
        finally:
            bar.close()
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([model(x[i : i + 256])[0].argmax(dim=1) for i in range(0, n, 256)])
        accuracy = float((predicted == y).float().mean())

    seconds = time.perf_counter() - started
    log.info("trained SmallCNN on %d frames, %d classes: %d epochs, loss %.4f, train acc %.3f, %.1f s",
             n, num_classes, len(losses), losses[-1], accuracy, seconds)
    return TrainResult(model=model, epochs=len(losses), final_loss=losses[-1], train_accuracy=accuracy,
                       seconds=seconds, losses=losses)


# ONNX Runtime's errors derive from Exception only; these are the ones a bad model raises.
_ORT_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, n)
    for n in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "RuntimeException")
)


def _ort_session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as exc:
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def export_onnx(model: torch.nn.Module, spec: InputSpec, path: Path, sample: np.ndarray,
                rtol: float = 1e-4, atol: float = 1e-4) -> ExportReport:
    """Export `model` (switched to eval mode) to `path`, check it, and prove ORT == torch on
    `sample`, a preprocessed float32 batch [N, C, H, W]. Raises ExportError."""
    path = Path(path)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    expected_shape = (spec.channels, spec.height, spec.width)
    if sample.ndim != 4 or sample.shape[1:] != expected_shape or len(sample) == 0:
        raise ExportError(f"sample must be a non-empty [N, {', '.join(map(str, expected_shape))}] batch, got {sample.shape}")
    model.eval()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            reference = [t.numpy() for t in model(torch.from_numpy(sample))]
            # The TorchScript exporter is deprecated upstream, but unlike the dynamo one it
            # needs no onnxscript and handles this plain conv net (DESIGN.md).
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                torch.onnx.export(
                    model, (torch.from_numpy(sample),), str(tmp), dynamo=False, opset_version=OPSET,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                )
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ExportError(f"torch.onnx.export failed: {exc}") from exc
        try:
            onnx.checker.check_model(str(tmp))
            outputs = _ort_session(tmp).run(list(OUTPUT_NAMES), {INPUT_NAME: sample})
        except (onnx.checker.ValidationError, *_ORT_ERRORS) as exc:
            raise ExportError(f"the exported model fails onnx.checker or ONNX Runtime: {exc}") from exc
        diffs = []
        for name, got, want in zip(OUTPUT_NAMES, outputs, reference):
            if got.shape != want.shape:
                raise ExportError(f"ONNX {name} has shape {got.shape}, torch {want.shape}")
            diffs.append(float(np.max(np.abs(got - want))))
            if not np.allclose(got, want, rtol=rtol, atol=atol):
                raise ExportError(f"ONNX Runtime and torch disagree on {name}: max abs diff {diffs[-1]:.3g}")
        os.replace(tmp, path)  # only a checked, parity-tested model reaches its final name
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the replace
    report = ExportReport(path=path, size_bytes=path.stat().st_size,
                          max_abs_diff_logits=diffs[0], max_abs_diff_embedding=diffs[1])
    log.info("exported %s (%d bytes), parity max diff logits %.2g embedding %.2g",
             path, report.size_bytes, report.max_abs_diff_logits, report.max_abs_diff_embedding)
    return report


def embed_frames(onnx_path: Path, spec: InputSpec, frames_bgr: Sequence[np.ndarray],
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model with ONNX Runtime: (probs float32 [N, C], embeddings float32 [N, D])."""
    session = _ort_session(Path(onnx_path))
    shapes = {o.name: o.shape for o in session.get_outputs()}
    missing = [name for name in OUTPUT_NAMES if name not in shapes]
    if missing:
        raise ExportError(f"{onnx_path} has no output(s) {missing}; it has {sorted(shapes)}")
    probs, embeddings = [], []
    for start in range(0, len(frames_bgr), batch_size):
        batch = preprocess(frames_bgr[start : start + batch_size], spec)
        try:
            logits, embedding = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        except _ORT_ERRORS as exc:
            raise ExportError(f"ONNX Runtime failed on {onnx_path} with a {batch.shape} batch: {exc}") from exc
        probs.append(softmax(logits).astype(np.float32))
        embeddings.append(np.asarray(embedding, dtype=np.float32))
    if not probs:  # no frames: empty arrays that still have the model's widths
        return (np.zeros((0, shapes["logits"][1]), np.float32), np.zeros((0, shapes["embedding"][1]), np.float32))
    return np.concatenate(probs), np.concatenate(embeddings)


def build_bundle(out_dir: Path, *, model: torch.nn.Module, name: str, version: int, parent_version: int,
                 classes: Sequence[str], spec: InputSpec, bank_frames_bgr: Sequence[np.ndarray],
                 label_set: dict, metrics: dict, workdir: Path, novelty_k: int = 1) -> Manifest:
    """Export `model`, embed the labeled frames as the novelty bank (with its distance
    calibration, so devices report novelty on one scale across models), write and verify a
    bundle at `out_dir` (which must not exist). Returns the manifest as written."""
    out_dir, workdir = Path(out_dir), Path(workdir)
    if out_dir.exists():  # fail before the export work, not after it
        raise BundleError(f"bundle directory {out_dir} already exists")
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path, bank_path = workdir / "model.onnx", workdir / "novelty_bank.npy"
    # Parity on real frames; zeros only when there are none (a bank-less first model).
    sample = (preprocess(bank_frames_bgr[:64], spec) if len(bank_frames_bgr)
              else np.zeros((2, spec.channels, spec.height, spec.width), np.float32))
    export_onnx(model, spec, onnx_path, sample)
    probs, bank = embed_frames(onnx_path, spec, bank_frames_bgr)
    if probs.shape[1] != len(classes):
        raise ExportError(f"model has {probs.shape[1]} outputs but {len(classes)} classes were given")
    np.save(bank_path, bank)
    manifest = Manifest(
        name=name, version=version, parent_version=parent_version, classes=tuple(classes), input=spec,
        label_set=dict(label_set), metrics=dict(metrics), embedding_dim=int(bank.shape[1]),
        novelty_k=novelty_k, novelty_quantiles=calibrate_bank(bank, k=novelty_k),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    written = write_bundle(out_dir, manifest, {manifest.model_file: onnx_path, manifest.novelty_bank_file: bank_path})
    verify_bundle(out_dir)  # what a device checks first; cheap, and catches a torn write here
    log.info("wrote bundle %s v%d to %s (bank %s)", name, version, out_dir, bank.shape)
    return written
