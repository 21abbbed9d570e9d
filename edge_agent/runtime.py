"""Run a verified model bundle with ONNX Runtime.

`LoadedModel` owns one InferenceSession plus everything needed to score frames with it (the
manifest's preprocessing and the novelty bank). It is immutable once loaded, so the agent can
swap one for another between frames by replacing a reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.bundle import BundleError, Manifest, verify_bundle
from edge_agent.preprocess import preprocess
from edge_agent.scoring import NoveltyBank, softmax

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class Inference:
    probs: np.ndarray  # [N, C]
    embeddings: np.ndarray  # [N, D] float32


def choose_providers(wanted: Sequence[str]) -> list[str]:
    """Keep the providers this onnxruntime build has, in the order asked; CPU is always last."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    for p in wanted:
        if p not in available:
            log.info("execution provider %s is not available here; skipping it", p)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class LoadedModel:
    """A bundle loaded into ONNX Runtime, checked with a smoke run."""

    def __init__(self, bundle_dir: Path, *, providers: Sequence[str] = DEFAULT_PROVIDERS, intra_op_threads: int = 1):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = verify_bundle(self.bundle_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(intra_op_threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.bundle_dir / self.manifest.model_file), sess_options=options, providers=choose_providers(providers)
            )
        except Exception as exc:  # ORT raises its own untyped errors: translate at this boundary
            raise BundleError(f"ONNX Runtime cannot load {self.manifest.model_file}: {exc}") from exc
        outputs = {o.name for o in self._session.get_outputs()}
        for name in (self.manifest.logits_output, self.manifest.embedding_output):
            if name not in outputs:
                raise BundleError(f"model has no output {name!r} (has {sorted(outputs)})")
        try:
            bank = np.load(self.bundle_dir / self.manifest.novelty_bank_file, allow_pickle=False)
            self.bank = NoveltyBank(bank if len(bank) else np.zeros((0, 1), np.float32))
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read novelty bank: {exc}") from exc
        self.smoke_latency_ms = self._smoke_run()

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    def _smoke_run(self) -> float:
        """One inference on a blank frame: proves the graph runs and warms it up."""
        spec = self.manifest.input
        blank = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
        start = time.perf_counter()
        result = self.infer([blank])
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        n_classes = result.probs.shape[1]
        if n_classes != len(self.manifest.classes):
            raise BundleError(f"model outputs {n_classes} classes, manifest lists {len(self.manifest.classes)}")
        if not np.all(np.isfinite(result.probs)) or not np.all(np.isfinite(result.embeddings)):
            raise BundleError("smoke run produced non-finite outputs")
        self.embedding_dim = int(result.embeddings.shape[1])
        if len(self.bank) and self.bank.dim != self.embedding_dim:
            raise BundleError(f"novelty bank dim {self.bank.dim} != embedding dim {result.embeddings.shape[1]}")
        return elapsed_ms

    def infer(self, frames_bgr: Sequence[np.ndarray]) -> Inference:
        x = preprocess(frames_bgr, self.manifest.input)
        logits, embeddings = self._session.run(
            [self.manifest.logits_output, self.manifest.embedding_output], {self.manifest.input_name: x}
        )
        return Inference(probs=softmax(logits), embeddings=np.asarray(embeddings, dtype=np.float32))

    def infer_batched(self, frames_bgr: Sequence[np.ndarray], batch_size: int = 256) -> Inference:
        parts = [self.infer(frames_bgr[i : i + batch_size]) for i in range(0, len(frames_bgr), batch_size)]
        if not parts:
            return Inference(np.zeros((0, len(self.classes))), np.zeros((0, 0), np.float32))
        return Inference(np.concatenate([p.probs for p in parts]), np.concatenate([p.embeddings for p in parts]))
