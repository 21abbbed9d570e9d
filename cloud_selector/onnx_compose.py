"""ONNX files for bundles: export from torch, run with ONNX Runtime, put a new head on any
backbone, write weights as external data, and check what a device will load.

Graph surgery (`compose_head`): from a parent model that exposes an embedding output, keep
only the nodes that output needs (the parent's old head, everything only its logits needed,
is dropped), then add one Gemm `logits = embedding @ head.weight.T + head.bias`. The outputs
become `logits` [N, C] and `embedding` [N, D] whatever the parent called them. The parent may
be any ONNX classifier, ours or a user's; its opset and IR version are kept (Gemm is in every
opset we meet; our own exports are opset 17).

Weights layout (`save_split`): model.onnx holds the graph only; the backbone's tensors go to
`backbone.weights` and the head's to `head.weights` as ONNX external data (ONNX Runtime reads
them from model.onnx's directory). The backbone file is written in the graph's initializer
order at 64-byte aligned offsets, so the same backbone tensors give byte-identical files: a
device that already holds a sha256 reuses it, and a head-only update ships kilobytes
(head.weights, plus model.onnx when the class count changes) instead of megabytes.

Checks (`check_model_file`): onnx.checker on the path (it follows external data), the input
and output names, the class count, and an ONNX Runtime run on real preprocessed frames.
`ExportError` for every failure here; ONNX Runtime's own errors are translated at this one
boundary.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from edge_agent.bundle import InputSpec
from edge_agent.preprocess import preprocess
from edge_agent.scoring import softmax

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "embedding")
OPSET = 17
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
MODEL_FILE, BACKBONE_FILE, HEAD_FILE = "model.onnx", "backbone.weights", "head.weights"
_ALIGN = 64
PARITY_FRAMES = 32  # real frames spread over the labeled set; enough to catch a wrong graph


class ExportError(Exception):
    """ONNX export, composition, the ONNX checker, ONNX Runtime or a parity check failed, or a
    model's outputs do not fit its classes."""


# ONNX Runtime's errors derive from Exception only; these are the ones a bad model raises.
_ORT_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, n)
    for n in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "RuntimeException")
)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    size_bytes: int
    max_abs_diff_logits: float
    max_abs_diff_embedding: float


def ort_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session, as a device would open it (external data resolves next to `path`);
    threads=0 lets ONNX Runtime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as exc:
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def run_model(session: ort.InferenceSession, spec: InputSpec, frames_bgr: Sequence[np.ndarray],
              input_name: str, outputs: Sequence[str], batch_size: int = 256) -> list[np.ndarray]:
    """Preprocess `frames_bgr` with `spec` and run them in batches; one array per output name."""
    available = {o.name for o in session.get_outputs()}
    missing = [name for name in outputs if name not in available]
    if missing or input_name not in {i.name for i in session.get_inputs()}:
        raise ExportError(f"model lacks input {input_name!r} or output(s) {missing}; it has outputs {sorted(available)}")
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, len(frames_bgr), batch_size):
        batch = preprocess(frames_bgr[start : start + batch_size], spec)
        try:
            got = session.run(list(outputs), {input_name: batch})
        except _ORT_ERRORS as exc:
            raise ExportError(f"ONNX Runtime failed on a {batch.shape} batch: {exc}") from exc
        for part, array in zip(parts, got):
            part.append(np.asarray(array, dtype=np.float32))
    return [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in parts]


def embed_frames(onnx_path: Path, spec: InputSpec, frames_bgr: Sequence[np.ndarray], batch_size: int = 256, *,
                 input_name: str = INPUT_NAME, outputs: Sequence[str] = OUTPUT_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Run a model with ONNX Runtime: (probs float32 [N, C], embeddings float32 [N, D])."""
    session = ort_session(Path(onnx_path))
    logits, embedding = run_model(session, spec, frames_bgr, input_name, outputs, batch_size)
    if not len(frames_bgr):  # no frames: empty arrays that still have the model's widths
        shapes = {o.name: o.shape for o in session.get_outputs()}
        return (np.zeros((0, shapes[outputs[0]][1]), np.float32), np.zeros((0, shapes[outputs[1]][1]), np.float32))
    return softmax(logits).astype(np.float32), embedding


def export_onnx(model: torch.nn.Module, spec: InputSpec, path: Path, sample: np.ndarray,
                rtol: float = 1e-4, atol: float = 1e-4) -> ExportReport:
    """Export `model` (switched to eval mode; forward returns (logits, embedding)) to one
    ONNX file at `path`, check it, and prove ORT == torch on `sample`, a preprocessed float32
    batch [N, C, H, W]. Only a checked, parity-tested file reaches `path`."""
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
            # needs no onnxscript and handles these plain conv nets (DESIGN.md).
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                torch.onnx.export(
                    model, (torch.from_numpy(sample),), str(tmp), dynamo=False, opset_version=OPSET,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                )
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ExportError(f"torch.onnx.export failed: {exc}") from exc
        outputs = check_model_file(tmp, sample, num_classes=reference[0].shape[1])
        diffs = parity(outputs, reference, rtol, atol)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the replace
    report = ExportReport(path=path, size_bytes=path.stat().st_size, max_abs_diff_logits=diffs[0],
                          max_abs_diff_embedding=diffs[1])
    log.info("exported %s (%d bytes), parity max diff logits %.2g embedding %.2g",
             path, report.size_bytes, report.max_abs_diff_logits, report.max_abs_diff_embedding)
    return report


def parity(got: Sequence[np.ndarray], want: Sequence[np.ndarray], rtol: float = 1e-4, atol: float = 1e-4) -> list[float]:
    """Max abs differences of (logits, embedding); ExportError beyond rtol/atol."""
    diffs = []
    for name, g, w in zip(OUTPUT_NAMES, got, want):
        if g.shape != w.shape:
            raise ExportError(f"ONNX {name} has shape {g.shape}, the reference {w.shape}")
        diffs.append(float(np.max(np.abs(g - w))) if g.size else 0.0)
        if not np.allclose(g, w, rtol=rtol, atol=atol):
            raise ExportError(f"ONNX Runtime and the reference disagree on {name}: max abs diff {diffs[-1]:.3g}")
    return diffs


def check_model_file(path: Path, sample: np.ndarray, *, num_classes: int, input_name: str = INPUT_NAME,
                     outputs: Sequence[str] = OUTPUT_NAMES) -> list[np.ndarray]:
    """What a device relies on: onnx.checker passes, ONNX Runtime loads the file and runs a
    real preprocessed batch, logits are [N, num_classes] and the embedding [N, D], all finite.
    Returns [logits, embedding] for `sample`."""
    try:
        onnx.checker.check_model(str(path))  # the path form follows external data
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    session = ort_session(path)
    if input_name not in {i.name for i in session.get_inputs()}:
        raise ExportError(f"{path.name} has no input {input_name!r}; it has {[i.name for i in session.get_inputs()]}")
    missing = [name for name in outputs if name not in {o.name for o in session.get_outputs()}]
    if missing:
        raise ExportError(f"{path.name} has no output(s) {missing}; it has {[o.name for o in session.get_outputs()]}")
    try:
        logits, embedding = session.run(list(outputs), {input_name: sample})
    except _ORT_ERRORS as exc:
        raise ExportError(f"ONNX Runtime cannot run {path.name} on a {sample.shape} batch: {exc}") from exc
    if logits.ndim != 2 or logits.shape != (len(sample), num_classes):
        raise ExportError(f"{path.name} gives logits of shape {logits.shape} for {len(sample)} frames "
                          f"but there are {num_classes} classes")
    if embedding.ndim != 2 or len(embedding) != len(sample):
        raise ExportError(f"{path.name} gives an embedding of shape {embedding.shape}; expected [{len(sample)}, D]")
    if not (np.isfinite(logits).all() and np.isfinite(embedding).all()):
        raise ExportError(f"{path.name} gives non-finite outputs on real frames")
    return [logits, embedding]


def sample_indices(n: int, k: int = PARITY_FRAMES) -> np.ndarray:
    """Up to k indices spread evenly over range(n): the frames checks and parity run on."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def latency_ms(path: Path, sample: np.ndarray, input_name: str = INPUT_NAME, runs: int = 20) -> float:
    """Median ms per frame at batch 1 on one intra-op thread (B2's setting), after 3 warm-ups."""
    session = ort_session(path, threads=1)
    frame = np.ascontiguousarray(sample[:1], dtype=np.float32)
    times = []
    for i in range(3 + runs):
        started = time.perf_counter()
        session.run(None, {input_name: frame})
        if i >= 3:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def compose_head(parent: onnx.ModelProto, embedding_output: str, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A new model: the parent's subgraph computing `embedding_output`, plus a Gemm head.
    `weight` is [C, D], `bias` [C] (float32), applied to the raw embedding."""
    graph = parent.graph
    parent_outputs = {o.name: o for o in graph.output}
    if embedding_output not in parent_outputs:
        raise ExportError(f"the parent model has no output {embedding_output!r}; it has {sorted(parent_outputs)}")
    weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ExportError(f"head weight must be [C, D] and bias [C], got {weight.shape} and {bias.shape}")

    # Walk back from the embedding; graph nodes are topologically sorted, so one reverse pass.
    needed, kept = {embedding_output}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(n for n in node.input if n)
            needed.update(_subgraph_inputs(node))
    kept.reverse()
    produced = {n for node in kept for n in node.output} | {t.name for t in graph.initializer if t.name in needed}
    for name in (OUTPUT_NAMES[0], HEAD_WEIGHT, HEAD_BIAS, *([OUTPUT_NAMES[1]] if embedding_output != OUTPUT_NAMES[1] else [])):
        if name in produced or name in {i.name for i in graph.input}:
            raise ExportError(f"the parent's backbone already uses the name {name!r}; rename it before composing")
    # Initializers are graph inputs too before IR version 4; from 4 on they need not be.
    inputs = [i for i in graph.input if i.name in needed and (parent.ir_version < 4 or i.name not in produced)]
    if not inputs:
        raise ExportError(f"{embedding_output!r} does not depend on any model input")

    emb_info = parent_outputs[embedding_output]
    if emb_info.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError(f"the embedding {embedding_output!r} must be float32 to take a float32 head")
    dims = emb_info.type.tensor_type.shape.dim
    batch = (dims[0].dim_param or dims[0].dim_value or "batch") if dims else "batch"
    nodes = list(kept)
    if embedding_output != OUTPUT_NAMES[1]:
        nodes.append(helper.make_node("Identity", [embedding_output], [OUTPUT_NAMES[1]], name="head/embedding"))
    nodes.append(helper.make_node("Gemm", [embedding_output, HEAD_WEIGHT, HEAD_BIAS], [OUTPUT_NAMES[0]],
                                  name="head/Gemm", transB=1))
    new_graph = helper.make_graph(
        nodes, graph.name or "edgeflywheel", inputs,
        [helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, [batch, weight.shape[0]]),
         helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, [batch, weight.shape[1]])],
        initializer=[t for t in graph.initializer if t.name in needed]
        + [numpy_helper.from_array(weight, HEAD_WEIGHT), numpy_helper.from_array(bias, HEAD_BIAS)],
        value_info=[v for v in graph.value_info if v.name in produced],
    )
    new_graph.sparse_initializer.extend(s for s in graph.sparse_initializer if s.values.name in needed)
    model = helper.make_model(new_graph, opset_imports=list(parent.opset_import), ir_version=parent.ir_version,
                              producer_name="edgeflywheel")  # no version or time: same input, same bytes
    model.functions.extend(parent.functions)
    model.metadata_props.extend(parent.metadata_props)
    return model


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies: outer-scope values they may capture."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_inputs(inner)
    return names


def save_split(model: onnx.ModelProto, out_dir: Path, head_names: Sequence[str] = (HEAD_WEIGHT, HEAD_BIAS)) -> dict[str, Path]:
    """Write model.onnx (graph only), backbone.weights and head.weights into `out_dir`.
    Returns {bundle file name: path}. Strings and empty tensors stay inline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    paths = {name: out_dir / name for name in (MODEL_FILE, BACKBONE_FILE, HEAD_FILE)}
    with open(paths[BACKBONE_FILE], "wb") as backbone, open(paths[HEAD_FILE], "wb") as head:
        for tensor in model_copy.graph.initializer:
            if tensor.data_type == TensorProto.STRING:
                continue
            if not tensor.HasField("raw_data"):  # typed fields (float_data, ...) -> raw bytes
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            data = tensor.raw_data
            if not data:
                continue
            target, location = (head, HEAD_FILE) if tensor.name in head_names else (backbone, BACKBONE_FILE)
            offset = target.tell()
            target.write(data)
            target.write(b"\0" * (-len(data) % _ALIGN))  # aligned starts let a runtime map the file
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                tensor.external_data.add(key=key, value=value)
    paths[MODEL_FILE].write_bytes(model_copy.SerializeToString(deterministic=True))
    return paths


def load_model(path: Path) -> onnx.ModelProto:
    """The model with its external data read in (from `path`'s directory)."""
    try:
        return onnx.load(str(path), load_external_data=True)
    except (OSError, ValueError, DecodeError) as exc:  # DecodeError: not ONNX at all
        raise ExportError(f"cannot read ONNX model {path}: {exc}") from exc
