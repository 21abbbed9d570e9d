"""Head-only retraining on a frozen backbone, and `train_bundle`, the entry point of all modes.

Head mode, read top to bottom (`retrain_head`):

1. Embed the labeled frames with the parent model in ONNX Runtime, preprocessed by the
   parent manifest's InputSpec (`edge_agent.preprocess`, the device's own function). The
   parent may be any ONNX classifier with an embedding output: ours or a user's.
2. `train_head`: a linear layer on the standardised embeddings with the shared loop
   (`cloud_selector.trainer.fit`: class-weighted cross entropy, AdamW with weight decay,
   seeded, optional early stopping on a stratified validation split; see HEAD_CONFIG for why
   it is off by default). Zero-initialised, so the same data always gives the same head. The
   standardisation is then folded into the weights, so the shipped head applies to the raw
   embedding. Cost: ~0.1 s at 300 labels, ~0.4 s at 1000; embedding the frames costs more
   (MobileNetV2 at 96 px: ~1 ms a frame on two cores).
3. Compose the parent's backbone and the new head into one ONNX graph and write it split:
   the backbone's bytes do not change, so devices reuse them (`cloud_selector.onnx_compose`).
4. Check it: onnx.checker, ONNX Runtime on real frames, logits equal to the torch head on the
   parent's embeddings, embedding equal to the parent's.

`train_bundle` runs one of the three modes (head here, full in `cloud_selector.trainer`,
external in `cloud_selector.external_trainer`) and writes an unsigned bundle with the novelty
bank recomputed through the new model and capped at `bank_cap` rows; `initial_bundle` makes a
first model: the ImageNet MobileNetV2 backbone frozen, with a head trained on the seed labels,
in the same split layout so that later head-only versions reuse its backbone.weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cloud_selector import mobilenet
from cloud_selector.external_trainer import train_external
from cloud_selector.onnx_compose import (
    BACKBONE_FILE,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAMES,
    ExportError,
    check_model_file,
    compose_head,
    export_onnx,
    latency_ms,
    load_model,
    ort_session,
    parity,
    run_model,
    sample_indices,
    save_split,
)
from cloud_selector.trainer import (
    ARCHES,
    FitResult,
    TrainConfig,
    TrainingError,
    cap_bank,
    check_data,
    check_labels,
    default_spec,
    deterministic_torch,
    fit,
    now_iso,
    save_checkpoint,
    train_classifier,
    cap_bank,
    write_model_bundle,
)
from edge_agent.bundle import MANIFEST_FILE, BundleError, InputSpec, Manifest, sha256_file, verify_bundle
from edge_agent.preprocess import preprocess

log = logging.getLogger(__name__)

MODES = ("head", "full", "external")
# A linear head on fixed features is a small convex problem: train it to convergence on every
# label. Early stopping works here (patience > 0) but is off by default because it measured
# worse: MobileNetV2-96 features of Fashion-MNIST, test accuracy on 1000 held-out frames with
# 100 / 300 / 1000 labels was 0.68 / 0.79 / 0.83 with a 20% validation split and patience 15
# (it stopped at epochs 5-12 on a noisy 20-200 frame split) against 0.74 / 0.81 / 0.84 with
# 100 epochs on all labels, which take ~0.1 s at 300 labels. lr and weight decay barely mattered.
HEAD_CONFIG = TrainConfig(epochs=100, batch_size=64, lr=1e-3, weight_decay=0.5, patience=0, augment=False)


@dataclass
class LinearHead:
    weight: np.ndarray  # float32 [C, D], applies to the raw (unstandardised) embedding
    bias: np.ndarray  # float32 [C]
    fit: FitResult
    train_accuracy: float
    seconds: float

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The head in torch float32: the reference the composed ONNX graph must match."""
        return _linear(embeddings, self.weight, self.bias)


def _linear(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return nn.functional.linear(torch.from_numpy(np.asarray(embeddings, np.float32)), torch.from_numpy(weight),
                                    torch.from_numpy(bias)).numpy()


class _Head(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(x), x


def train_head(embeddings: np.ndarray, labels: Sequence[int], num_classes: int, config: TrainConfig = HEAD_CONFIG,
               progress: bool = False) -> LinearHead:
    """A linear head for embeddings [N, D]; deterministic for a given config.seed."""
    config.validate()
    started = time.perf_counter()
    y = check_labels(labels, len(embeddings), num_classes)
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or not np.isfinite(e).all():
        raise TrainingError(f"embeddings must be a finite [N, D] array, got shape {e.shape}")
    # Standardise: post-ReLU features span very different scales, and a common scale lets
    # one learning rate and weight decay fit all of them. A constant feature divides by 1.
    mean, std = e.mean(axis=0), e.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    x = torch.from_numpy(((e - mean) / std).astype(np.float32))
    with deterministic_torch(config.seed, config.threads):
        head = _Head(e.shape[1], num_classes)
        fitted = fit(head, x, torch.from_numpy(y), num_classes, config, progress=progress, desc="train head")
    w = head.linear.weight.detach().double().numpy() / std  # fold (x - mean) / std into W and b
    weight, bias = w.astype(np.float32), (head.linear.bias.detach().double().numpy() - w @ mean).astype(np.float32)
    accuracy = float((_linear(e, weight, bias).argmax(1) == y).mean())
    return LinearHead(weight=weight, bias=bias, fit=fitted, train_accuracy=accuracy,
                      seconds=time.perf_counter() - started)


def _metrics(fitted: FitResult, *, labels: int, train_accuracy: float, seconds: float) -> dict:
    """manifest.metrics for a trained model: what the registry and the dashboard show."""
    return {"labels": labels, "train_accuracy": train_accuracy, "val_accuracy": fitted.val_accuracy,
            "epochs": fitted.epochs, "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
            "final_loss": fitted.losses[-1], "train_seconds": seconds}


@dataclass
class TrainedModel:
    """What a mode hands to the bundle writer: model files in a work dir and what is known of them."""

    files: dict[str, Path]  # bundle file name -> path
    spec: InputSpec
    bank: np.ndarray  # the labeled set's embeddings through this model, uncapped
    sample: np.ndarray  # preprocessed real frames, for the latency figure
    arch: str
    metrics: dict
    diffs: list[float] | None = None  # ORT vs reference (logits, embedding); None: no reference
    input_name: str = INPUT_NAME
    outputs: tuple[str, str] = OUTPUT_NAMES
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)  # more for manifest.trainer


def retrain_head(parent_model: Path, frames_bgr: Sequence[np.ndarray], labels: Sequence[int], num_classes: int,
                 spec: InputSpec, workdir: Path, *, input_name: str = INPUT_NAME,
                 embedding_output: str = OUTPUT_NAMES[1], config: TrainConfig = HEAD_CONFIG,
                 progress: bool = False) -> TrainedModel:
    """Head mode: a new head on `parent_model`'s backbone, composed and written split into
    `workdir`, checked against the parent. ExportError or TrainingError."""
    (embeddings,) = run_model(ort_session(parent_model), spec, frames_bgr, input_name, [embedding_output])
    if embeddings.ndim != 2:
        raise ExportError(f"the parent's {embedding_output!r} output has shape {embeddings.shape}; a head needs [N, D]")
    head = train_head(embeddings, labels, num_classes, config, progress)
    files = save_split(compose_head(load_model(parent_model), embedding_output, head.weight, head.bias), workdir)
    idx = sample_indices(len(frames_bgr))
    sample = preprocess([frames_bgr[i] for i in idx], spec)
    got = check_model_file(files[MODEL_FILE], sample, num_classes=num_classes, input_name=input_name)
    diffs = parity(got, [head.logits(embeddings[idx]), embeddings[idx]])
    metrics = _metrics(head.fit, labels=len(labels), train_accuracy=head.train_accuracy, seconds=head.seconds)
    return TrainedModel(files=files, spec=spec, bank=embeddings, sample=sample, arch="onnx", metrics=metrics,
                        diffs=diffs, input_name=input_name)


def _full_model(frames_bgr, labels, classes, spec, arch, config, label_set, workdir: Path, progress) -> TrainedModel:
    """Full mode: train the whole network, export, then re-compose in the split layout so a
    later head-only version can reuse this backbone.weights."""
    result = train_classifier(frames_bgr, labels, len(classes), spec, config, progress=progress, arch=arch)
    checkpoint = save_checkpoint(workdir / "checkpoint.pt", result, config=config, classes=classes, spec=spec,
                                 label_set=label_set)
    sample = preprocess([frames_bgr[i] for i in sample_indices(len(frames_bgr))], spec)
    export_onnx(result.model, spec, workdir / "export.onnx", sample)
    head = result.model.head
    composed = compose_head(load_model(workdir / "export.onnx"), OUTPUT_NAMES[1],
                            head.weight.detach().numpy(), head.bias.detach().numpy())
    files = save_split(composed, workdir / "model")
    with torch.no_grad():
        reference = [t.numpy() for t in result.model(torch.from_numpy(sample))]
    diffs = parity(check_model_file(files[MODEL_FILE], sample, num_classes=len(classes)), reference)
    (bank,) = run_model(ort_session(files[MODEL_FILE]), spec, frames_bgr, INPUT_NAME, [OUTPUT_NAMES[1]])
    metrics = _metrics(result.fit, labels=len(labels), train_accuracy=result.train_accuracy, seconds=result.seconds)
    return TrainedModel(files=files, spec=spec, bank=bank, sample=sample, arch=arch, metrics=metrics, diffs=diffs,
                        checkpoint=checkpoint)


@dataclass(frozen=True)
class BundleReport:
    sizes: dict[str, int]  # bundle file -> bytes, manifest.json included
    bank_rows: int
    bank_bytes: int  # novelty_bank.npy, reported apart: at D = 1280 it outweighs a head
    max_abs_diff_logits: float | None  # ONNX Runtime vs the torch reference; None for external
    max_abs_diff_embedding: float | None
    latency_ms: float  # median ms per frame, batch 1, one intra-op thread


@dataclass
class TrainedBundle:
    manifest: Manifest
    mode: str  # head | full | external | seed
    seconds: float  # wall time of the whole call
    metrics: dict  # training metrics, also in manifest.metrics
    checkpoint: Path | None  # full mode's torch checkpoint (+ .json sidecar) in the workdir
    export: BundleReport


def train_bundle(out_dir: Path, *, mode: str, frames_bgr: Sequence[np.ndarray], labels: Sequence[int],
                 classes: Sequence[str], parent_bundle: Path | None, arch: str = "mobilenet_v2",
                 spec: InputSpec | None = None, name: str, version: int, parent_version: int, label_set: dict,
                 config: TrainConfig | None = None, workdir: Path, progress: bool = False,
                 external_command: Sequence[str] | None = None, external_names: dict[str, str] | None = None,
                 external_timeout_s: float = 3600.0, bank_cap: int | None = 2000,
                 novelty_k: int = 1) -> TrainedBundle:
    """Train with `mode` and write an unsigned bundle at `out_dir` (which must not exist).

    head: needs `parent_bundle`; keeps its backbone and input spec, `arch`/`spec` unused.
    full: `arch` from ImageNet (mobilenet_v2) or scratch (small_cnn); `spec` defaults to the
    parent's, else the arch's. external: runs `external_command` (see external_trainer);
    `external_names` maps "input"/"logits"/"embedding" to the model's names; `spec` defaults
    to the parent's. `config` defaults to HEAD_CONFIG (head) or TrainConfig() (full)."""
    started = time.perf_counter()
    out_dir, workdir = Path(out_dir), Path(workdir)
    if out_dir.exists():  # fail before the training work, not after it
        raise BundleError(f"bundle directory {out_dir} already exists")
    if mode not in MODES:
        raise TrainingError(f"unknown trainer mode {mode!r}; use one of {MODES}")
    check_data(frames_bgr, labels, len(classes))
    parent = verify_bundle(parent_bundle) if parent_bundle is not None else None
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "head":
        if parent is None:
            raise TrainingError("head mode needs a parent bundle whose backbone it keeps")
        if spec is not None and spec != parent.input:
            raise TrainingError("head mode keeps the parent's input spec; pass spec=None")
        config = config or HEAD_CONFIG
        model = retrain_head(Path(parent_bundle) / parent.model_file, frames_bgr, labels, len(classes), parent.input,
                             workdir / "model", input_name=parent.input_name,
                             embedding_output=parent.embedding_output, config=config, progress=progress)
        model.arch = parent.trainer.get("arch", "onnx")
    elif mode == "full":
        config = config or TrainConfig()
        spec = spec or (parent.input if parent else default_spec(arch))
        model = _full_model(frames_bgr, labels, classes, spec, arch, config, label_set, workdir, progress)
    else:
        spec = spec or (parent.input if parent else None)
        if spec is None or not external_command:
            raise TrainingError("external mode needs external_command and an input spec (spec= or a parent)")
        names = {"input": INPUT_NAME, "logits": OUTPUT_NAMES[0], "embedding": OUTPUT_NAMES[1], **(external_names or {})}
        done = train_external(external_command, frames_bgr, labels, classes, spec, workdir / "external",
                              timeout_s=external_timeout_s, input_name=names["input"],
                              outputs=(names["logits"], names["embedding"]))
        sample = preprocess([frames_bgr[i] for i in sample_indices(len(frames_bgr))], spec)
        model = TrainedModel(files={MODEL_FILE: done.model_path}, spec=spec, bank=done.embeddings, sample=sample,
                             arch="external", metrics={"labels": len(labels), "train_seconds": done.seconds},
                             input_name=names["input"], outputs=(names["logits"], names["embedding"]),
                             extra={"command": list(external_command)})
    return _finish(out_dir, model, mode=mode, classes=classes, name=name, version=version,
                   parent_version=parent_version, label_set=label_set, config=config, workdir=workdir,
                   bank_cap=bank_cap, novelty_k=novelty_k, started=started)


def initial_bundle(out_dir: Path, *, frames_bgr: Sequence[np.ndarray], labels: Sequence[int], classes: Sequence[str],
                   arch: str = "mobilenet_v2", spec: InputSpec | None = None, name: str, version: int = 1,
                   label_set: dict, config: TrainConfig | None = None, workdir: Path, progress: bool = False,
                   bank_cap: int | None = 2000, novelty_k: int = 1) -> TrainedBundle:
    """A first model (manifest.trainer mode "seed"). mobilenet_v2: the ImageNet backbone,
    frozen, with a head trained on these labels (config defaults to HEAD_CONFIG), split so
    later head-only versions reuse its backbone.weights. small_cnn: a full train from scratch
    (a random backbone is no use frozen; config defaults to TrainConfig())."""
    started = time.perf_counter()
    out_dir, workdir, spec = Path(out_dir), Path(workdir), spec or default_spec(arch)
    if out_dir.exists():
        raise BundleError(f"bundle directory {out_dir} already exists")
    if arch not in ARCHES:
        raise TrainingError(f"unknown arch {arch!r}; use one of {ARCHES}")
    check_data(frames_bgr, labels, len(classes))
    workdir.mkdir(parents=True, exist_ok=True)
    if arch == "small_cnn":
        config = config or TrainConfig()
        model = _full_model(frames_bgr, labels, classes, spec, arch, config, label_set, workdir, progress)
    else:
        if spec.channels != 3:
            raise TrainingError(f"mobilenet_v2 takes 3-channel input; the input spec is {spec.color!r}")
        config = config or HEAD_CONFIG
        with deterministic_torch(config.seed, config.threads):  # the throwaway head's init
            imagenet = mobilenet.pretrained(num_classes=1)
        sample = preprocess(frames_bgr[:8], spec)
        export_onnx(imagenet, spec, workdir / "imagenet.onnx", sample)  # its 1-class head is dropped next
        model = retrain_head(workdir / "imagenet.onnx", frames_bgr, labels, len(classes), spec, workdir / "model",
                             config=config, progress=progress)
        model.arch = arch
    return _finish(out_dir, model, mode="seed", classes=classes, name=name, version=version, parent_version=0,
                   label_set=label_set, config=config, workdir=workdir, bank_cap=bank_cap, novelty_k=novelty_k,
                   started=started)


def _finish(out_dir: Path, model: TrainedModel, *, mode: str, classes, name, version, parent_version, label_set,
            config: TrainConfig | None, workdir: Path, bank_cap, novelty_k, started: float) -> TrainedBundle:
    """Every mode's last step: latency, the capped bank, the manifest, the bundle. `config` is
    None for external models (their training is the user's business)."""
    latency = latency_ms(model.files[MODEL_FILE], model.sample, model.input_name)
    bank = cap_bank(model.bank, bank_cap, config.seed if config else 0)
    backbone = model.files.get(BACKBONE_FILE, model.files[MODEL_FILE])
    trainer = {"mode": mode, "arch": model.arch, "config": asdict(config) if config else {},
               "backbone_sha256": sha256_file(backbone), **model.extra}
    manifest = Manifest(name=name, version=version, parent_version=parent_version, classes=tuple(classes),
                        input=model.spec, input_name=model.input_name, logits_output=model.outputs[0],
                        embedding_output=model.outputs[1], label_set=dict(label_set), metrics=dict(model.metrics),
                        novelty_k=novelty_k, created_at=now_iso(), trainer=trainer)
    written = write_model_bundle(out_dir, manifest, model.files, bank, workdir)
    sizes = {rel: (out_dir / rel).stat().st_size for rel in (*written.files, MANIFEST_FILE)}
    report = BundleReport(sizes=sizes, bank_rows=len(bank), bank_bytes=sizes[written.novelty_bank_file],
                          max_abs_diff_logits=model.diffs[0] if model.diffs else None,
                          max_abs_diff_embedding=model.diffs[1] if model.diffs else None, latency_ms=latency)
    seconds = time.perf_counter() - started
    log.info("%s bundle %s v%d: %d labels, %s, latency %.2f ms, %.1f s", mode, name, version, len(model.bank),
             sizes, latency, seconds)
    return TrainedBundle(manifest=written, mode=mode, seconds=seconds, metrics=dict(model.metrics),
                         checkpoint=model.checkpoint, export=report)
