"""Tiny real ONNX classifier bundles, built in milliseconds without training: a linear layer
on the flattened 8x8 grey input (logits) and the flattened input itself (embedding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.bundle import InputSpec, Manifest, write_bundle

CLASSES = ("a", "b", "c")
SPEC = InputSpec(width=8, height=8, color="gray", mean=(0.5,), std=(0.5,))


def tiny_bundle(root: Path, version: int, *, seed: int | None = None, name: str = "tiny") -> Path:
    """A bundle at root/bundle-v<version> whose weights depend on `seed` (default: the version)."""
    rng = np.random.default_rng(version if seed is None else seed)
    weight = rng.standard_normal((64, len(CLASSES))).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["embedding"], axis=1),
             helper.make_node("MatMul", ["embedding", "w"], ["logits"])]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 64])],
                              initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    src = Path(root) / f"src-v{version}"
    src.mkdir(parents=True, exist_ok=True)
    onnx.save(model, src / "model.onnx")
    np.save(src / "bank.npy", rng.standard_normal((16, 64)).astype(np.float32))
    manifest = Manifest(name=name, version=version, parent_version=version - 1, classes=CLASSES, input=SPEC,
                        embedding_dim=64)
    out = Path(root) / f"bundle-v{version}"
    write_bundle(out, manifest, {"model.onnx": src / "model.onnx", "novelty_bank.npy": src / "bank.npy"})
    return out
