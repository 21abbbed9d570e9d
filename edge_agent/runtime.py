"""Run a verified model bundle with ONNX Runtime.

`LoadedModel` owns one InferenceSession plus everything needed to score frames with it (the
manifest's preprocessing and the novelty bank). Its model, manifest and bank are fixed once
loaded, so the agent can swap one for another between frames by replacing a reference.

Execution providers come from configuration (`ProviderSettings`) as a preference list, e.g.
TensorRT, then CUDA, then CPU. `resolve_providers` turns that list into what ONNX Runtime takes
(names with per-provider options), keeping only what this onnxruntime build offers: the same
config then works on a Jetson with TensorRT and on a CPU-only box, which logs one line per
provider it skips. After loading, `LoadedModel.providers` says what the session really uses,
because ONNX Runtime itself may drop a provider it cannot start.

Errors: `ValueError` for settings that name unknown providers or hold impossible values (a
configuration mistake, found before any bundle is touched); `BundleError` for a bundle ONNX
Runtime cannot load or run, or whose outputs disagree with its manifest.
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

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEFAULT_PROVIDERS = (CPU,)

# What ONNX Runtime's `providers=` argument takes: a name, or (name, options).
ProviderEntry = str | tuple[str, dict[str, object]]


@dataclass(frozen=True)
class Inference:
    probs: np.ndarray  # [N, C]
    embeddings: np.ndarray  # [N, D] float32


@dataclass(frozen=True)
class ProviderSettings:
    """How to run models: execution providers in order of preference and their options.

    Only the options of providers that end up selected matter, so one config can serve a
    fleet of mixed devices.
    """

    providers: tuple[str, ...] = DEFAULT_PROVIDERS  # any sequence; stored as a tuple
    cuda_device_id: int = 0  # for CUDA and TensorRT
    # Non-empty: TensorRT caches built engines here (building one takes minutes on a Jetson,
    # so without a cache every restart and model swap pays for it again). Created on load.
    trt_engine_cache_dir: str = ""
    trt_fp16: bool = False  # TensorRT may run layers in fp16: faster, slightly different scores
    intra_op_threads: int = 1  # 0 = ONNX Runtime's default (all cores)
    # Inferences after the smoke run, before the model serves: the first runs on a GPU provider
    # pay for allocations and kernel selection, which would otherwise land on live frames.
    warmup_runs: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.providers, str):
            raise ValueError(f"providers must be a list of names, got the string {self.providers!r}")
        object.__setattr__(self, "providers", tuple(str(p) for p in self.providers))
        if self.cuda_device_id < 0 or self.intra_op_threads < 0 or self.warmup_runs < 0:
            raise ValueError("cuda_device_id, intra_op_threads and warmup_runs must be >= 0")


def _with_options(name: str, settings: ProviderSettings) -> ProviderEntry:
    if name == TENSORRT:
        options: dict[str, object] = {"device_id": settings.cuda_device_id, "trt_fp16_enable": settings.trt_fp16}
        if settings.trt_engine_cache_dir:
            options["trt_engine_cache_enable"] = True
            options["trt_engine_cache_path"] = settings.trt_engine_cache_dir
        return (name, options)
    if name == CUDA:
        return (name, {"device_id": settings.cuda_device_id})
    return name


def resolve_providers(settings: ProviderSettings, available: Sequence[str]) -> tuple[list[ProviderEntry], list[str]]:
    """The providers to hand ONNX Runtime, and the names skipped because `available` (what
    this build offers) lacks them.

    Order is the order asked, duplicates dropped, CPU always last (it takes every node, so
    anything after it would never run, and it is the fallback that always exists). Names that
    no onnxruntime build knows are a ValueError: a typo must not silently mean "CPU only".
    Pure apart from one log line per skipped provider.
    """
    known = ort.get_all_providers()
    unknown = [p for p in settings.providers if p not in known]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; ONNX Runtime knows {', '.join(known)}")
    wanted = [p for p in dict.fromkeys(settings.providers) if p != CPU] + [CPU]
    chosen = [p for p in wanted if p in available or p == CPU]
    skipped = [p for p in wanted if p not in chosen]
    for name in skipped:
        log.warning("%s is not available in this onnxruntime build; falling back to %s", name, ", ".join(chosen))
    return [_with_options(p, settings) for p in chosen], skipped


def _provider_name(entry: ProviderEntry) -> str:
    return entry if isinstance(entry, str) else entry[0]


class LoadedModel:
    """A bundle loaded into ONNX Runtime, checked with a smoke run and warmed up.

    `settings` wins over `providers`/`intra_op_threads`, which remain for existing callers.
    `available_providers` defaults to what this onnxruntime build offers; passing a wider list
    hands ONNX Runtime providers it cannot start, which is how tests reach its own silent
    fallback on a CPU-only machine.

    After loading: `providers` is what the session really uses (best first), `session_runs`
    counts ONNX Runtime runs (smoke + warm-up + inference; a diagnostic, not synchronised),
    `embedding_dim` is the measured embedding length, `smoke_latency_ms` and
    `warmup_latency_ms` time the load-time runs.
    """

    def __init__(
        self,
        bundle_dir: Path,
        *,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 1,
        settings: ProviderSettings | None = None,
        available_providers: Sequence[str] | None = None,
    ):
        if settings is None:
            settings = ProviderSettings(providers=tuple(providers), intra_op_threads=max(0, int(intra_op_threads)))
        self.settings = settings
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = verify_bundle(self.bundle_dir)
        available = ort.get_available_providers() if available_providers is None else available_providers
        entries, self.skipped_providers = resolve_providers(self.settings, available)
        if self.settings.trt_engine_cache_dir and TENSORRT in map(_provider_name, entries):
            Path(self.settings.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
        self.session_runs = 0
        self._session = self._create_session(entries)
        self.providers: list[str] = self._session.get_providers()
        asked = [_provider_name(e) for e in entries]
        dropped = [p for p in asked if p not in self.providers]
        if dropped:
            log.warning("ONNX Runtime could not start %s for %s; the session uses %s",
                        ", ".join(dropped), self.manifest.model_file, ", ".join(self.providers))
        self.fixed_batch = self._check_io()
        try:
            bank = np.load(self.bundle_dir / self.manifest.novelty_bank_file, allow_pickle=False)
            self.bank = NoveltyBank(bank if len(bank) else np.zeros((0, 1), np.float32),
                                    k=self.manifest.novelty_k, quantiles=self.manifest.novelty_quantiles)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read novelty bank: {exc}") from exc
        self.smoke_latency_ms = self._smoke_run()
        self.warmup_latency_ms = self._warm_up(self.settings.warmup_runs)

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    def _create_session(self, entries: list[ProviderEntry]) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.settings.intra_op_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self.bundle_dir / self.manifest.model_file), sess_options=options, providers=entries
            )
        except Exception as exc:  # ORT raises its own untyped errors: translate at this boundary
            raise BundleError(f"ONNX Runtime cannot load {self.manifest.model_file}: {exc}") from exc

    def _check_io(self) -> int | None:
        """Check names and static dimensions against the manifest, before anything runs, so a
        mismatch reads as such rather than as an ORT shape error. Returns the model's fixed
        batch size, or None when the batch dimension is dynamic."""
        outputs = {o.name for o in self._session.get_outputs()}
        for name in (self.manifest.logits_output, self.manifest.embedding_output):
            if name not in outputs:
                raise BundleError(f"model has no output {name!r} (has {sorted(outputs)})")
        inputs = {i.name: i for i in self._session.get_inputs()}
        if self.manifest.input_name not in inputs:
            raise BundleError(f"model has no input {self.manifest.input_name!r} (has {sorted(inputs)})")
        shape = inputs[self.manifest.input_name].shape
        spec = self.manifest.input
        hwc = (spec.height, spec.width, spec.channels)
        expected = hwc if spec.layout == "NHWC" else (spec.channels, spec.height, spec.width)
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
            needs = ", ".join(map(str, expected))
            raise BundleError(f"model input {self.manifest.input_name!r} has shape {shape}; the manifest's "
                              f"{spec.layout} {spec.width}x{spec.height} {spec.color} input needs [N, {needs}]")
        fixed = shape[0] if isinstance(shape[0], int) else None
        if fixed is not None and fixed != 1:
            raise BundleError(f"model has a fixed batch of {fixed}; the agent needs batch 1 or a dynamic batch")
        return fixed

    def _run(self, x: np.ndarray) -> Inference:
        logits, embeddings = self._session.run(
            [self.manifest.logits_output, self.manifest.embedding_output], {self.manifest.input_name: x}
        )
        self.session_runs += 1
        return Inference(probs=softmax(logits), embeddings=np.asarray(embeddings, dtype=np.float32))

    def _run_at_load(self, x: np.ndarray) -> Inference:
        try:
            return self._run(x)
        except Exception as exc:  # ORT raises its own untyped errors: translate at this boundary
            raise BundleError(f"ONNX Runtime cannot run {self.manifest.model_file}: {exc}") from exc

    def _blank_input(self) -> np.ndarray:
        """One blank frame (batch of 1: the agent infers a frame at a time, and TensorRT builds
        its engine for the shapes it sees first)."""
        spec = self.manifest.input
        return preprocess([np.zeros((spec.height, spec.width, 3), dtype=np.uint8)], spec)

    def _smoke_run(self) -> float:
        """One inference on a blank frame: proves the graph runs and its outputs match the
        manifest. Returns its latency in ms (on GPU providers this includes engine building)."""
        x = self._blank_input()
        start = time.perf_counter()
        result = self._run_at_load(x)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        n_classes = result.probs.shape[1]
        if n_classes != len(self.manifest.classes):
            raise BundleError(f"model outputs {n_classes} classes, manifest lists {len(self.manifest.classes)}")
        if not np.all(np.isfinite(result.probs)) or not np.all(np.isfinite(result.embeddings)):
            raise BundleError("smoke run produced non-finite outputs")
        self.embedding_dim = int(result.embeddings.shape[1])
        if self.manifest.embedding_dim and self.manifest.embedding_dim != self.embedding_dim:
            raise BundleError(f"model embedding has {self.embedding_dim} values, "
                              f"manifest says {self.manifest.embedding_dim}")
        if len(self.bank) and self.bank.dim != self.embedding_dim:
            raise BundleError(f"novelty bank dim {self.bank.dim} != embedding dim {self.embedding_dim}")
        return elapsed_ms

    def _warm_up(self, runs: int) -> tuple[float, ...]:
        """`runs` more inferences on the blank frame; returns each one's latency in ms."""
        x = self._blank_input()
        latencies = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run_at_load(x)
            latencies.append((time.perf_counter() - start) * 1000.0)
        return tuple(latencies)

    def infer(self, frames_bgr: Sequence[np.ndarray]) -> Inference:
        return self._run(preprocess(frames_bgr, self.manifest.input))

    def infer_batched(self, frames_bgr: Sequence[np.ndarray], batch_size: int = 256) -> Inference:
        """Many frames in chunks of `batch_size` (1 when the model's batch is fixed at 1)."""
        step = min(batch_size, self.fixed_batch or batch_size)
        parts = [self.infer(frames_bgr[i : i + step]) for i in range(0, len(frames_bgr), step)]
        if not parts:
            return Inference(np.zeros((0, len(self.classes))), np.zeros((0, 0), np.float32))
        return Inference(np.concatenate([p.probs for p in parts]), np.concatenate([p.embeddings for p in parts]))
