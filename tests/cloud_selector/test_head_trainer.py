"""Head-only retraining and composition with real ONNX files, ONNX Runtime and Fashion-MNIST:
a seed bundle (ImageNet MobileNetV2 frozen + a head), a head-only version on more labels, and
a foreign ONNX classifier with its own names as a parent."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from cloud_selector.cnn import SmallCNN
from cloud_selector.head_trainer import HEAD_CONFIG, initial_bundle, train_bundle, train_head
from cloud_selector.onnx_compose import ExportError
from cloud_selector.trainer import TrainConfig, TrainingError, write_model_bundle
from edge_agent.bundle import InputSpec, Manifest, sha256_file, verify_bundle
from edge_agent.preprocess import preprocess

CLASSES = tuple(f"c{i}" for i in range(10))


def pick(dataset, per_class: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(dataset.labels == c), per_class, replace=False) for c in range(10)])
    return [dataset.images[i] for i in idx], [int(dataset.labels[i]) for i in idx]


@pytest.fixture(scope="module")
def versions(tmp_path_factory, fashion_train):
    """v1: the seed bundle on 15 labels a class; v2: head-only on 25 other labels a class."""
    root = tmp_path_factory.mktemp("head")
    frames1, labels1 = pick(fashion_train, 15, seed=1)
    frames2, labels2 = pick(fashion_train, 25, seed=2)
    v1 = initial_bundle(root / "v1", frames_bgr=frames1, labels=labels1, classes=CLASSES, name="fm",
                        label_set={"count": len(labels1)}, workdir=root / "w1")
    v2 = train_bundle(root / "v2", mode="head", frames_bgr=frames2, labels=labels2, classes=CLASSES,
                      parent_bundle=root / "v1", name="fm", version=2, parent_version=1,
                      label_set={"count": len(labels2)}, workdir=root / "w2", bank_cap=100)
    test_frames, _ = pick(fashion_train, 3, seed=3)
    return root, v1, v2, test_frames


def test_head_only_version_reuses_the_backbone_bytes(versions):
    root, v1, v2, _ = versions
    assert (root / "v1" / "backbone.weights").read_bytes() == (root / "v2" / "backbone.weights").read_bytes()
    assert (root / "v1" / "head.weights").read_bytes() != (root / "v2" / "head.weights").read_bytes()
    # Same classes, same graph: model.onnx only names its weight files, so it is reused too.
    assert (root / "v1" / "model.onnx").read_bytes() == (root / "v2" / "model.onnx").read_bytes()
    for trained, mode in ((v1, "seed"), (v2, "head")):
        trainer = trained.manifest.trainer
        assert (trainer["mode"], trainer["arch"], trained.mode) == (mode, "mobilenet_v2", mode)
        assert trainer["backbone_sha256"] == sha256_file(root / "v1" / "backbone.weights")
        assert trainer["config"]["epochs"] == HEAD_CONFIG.epochs
    sizes = v2.export.sizes
    head_only = sizes["model.onnx"] + sizes["head.weights"]
    assert head_only < 0.02 * sum(sizes.values())  # measured ~1%: 100 kB of ~10 MB
    assert sizes["backbone.weights"] > 8_000_000 and sizes["head.weights"] < 60_000
    assert v2.export.bank_bytes == sizes["novelty_bank.npy"] and v2.export.latency_ms > 0


def test_composed_model_matches_torch_and_keeps_the_parent_embedding(versions):
    root, v1, v2, frames = versions
    path = root / "v2" / "model.onnx"
    onnx.checker.check_model(str(path))
    assert v2.export.max_abs_diff_logits < 1e-4 and v2.export.max_abs_diff_embedding < 1e-4
    model = onnx.load(str(path))  # reads the external data from beside it
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not any(name.startswith("classifier.") for name in weights)  # the ImageNet head is gone
    assert [n.op_type for n in model.graph.node if n.name.startswith("head/")] == ["Gemm"]

    x = preprocess(frames, v2.manifest.input)
    parent = ort.InferenceSession(str(root / "v1" / "model.onnx"))
    child = ort.InferenceSession(str(path))
    assert [o.name for o in child.get_outputs()] == ["logits", "embedding"]
    (parent_embedding,) = parent.run(["embedding"], {"input": x})
    logits, embedding = child.run(["logits", "embedding"], {"input": x})
    np.testing.assert_allclose(embedding, parent_embedding, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = torch.nn.functional.linear(torch.tensor(parent_embedding), torch.tensor(weights["head.weight"]),
                                              torch.tensor(weights["head.bias"]))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_bank_is_capped_and_calibrated(versions):
    root, v1, v2, _ = versions
    bank = np.load(root / "v2" / "novelty_bank.npy")
    assert bank.shape == (100, 1280) and v2.export.bank_rows == 100
    assert v1.export.bank_rows == 150  # under the cap: every label
    assert v2.manifest.embedding_dim == 1280 and len(v2.manifest.novelty_quantiles) == 101
    assert v2.metrics["labels"] == 250 and v2.manifest.label_set == {"count": 250}


def _foreign_parent(root, frames, labels) -> tuple:
    """A user's classifier: input `pixels`, outputs `probs` (softmax) and `feat`."""

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallCNN(4, 1, embedding_dim=16)

        def forward(self, x):
            logits, feat = self.net(x)
            return torch.softmax(logits, 1), feat

    spec = InputSpec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Foreign().eval()
    onnx_path = root / "foreign.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["pixels"], output_names=["probs", "feat"],
                      dynamic_axes={"pixels": {0: "n"}, "probs": {0: "n"}, "feat": {0: "n"}})
    manifest = Manifest(name="theirs", version=1, classes=("a", "b", "c", "d"), input=spec, input_name="pixels",
                        logits_output="probs", embedding_output="feat")
    with torch.no_grad():
        _, bank = model(torch.from_numpy(preprocess(frames, spec)))
    (root / "wp").mkdir()
    write_model_bundle(root / "parent", manifest, {"model.onnx": onnx_path}, bank.numpy(), root / "wp")
    return root / "parent", spec


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's own warnings
def test_head_mode_on_a_foreign_onnx_with_its_own_names(tmp_path, fashion_train):
    frames, labels = pick(fashion_train, 8, seed=4)
    frames, labels = frames[:32], [label % 4 for label in labels[:32]]
    parent, spec = _foreign_parent(tmp_path, frames, labels)
    trained = train_bundle(tmp_path / "v2", mode="head", frames_bgr=frames, labels=labels, classes=("a", "b", "c", "d"),
                           parent_bundle=parent, name="theirs", version=2, parent_version=1, label_set={},
                           workdir=tmp_path / "w")
    manifest = verify_bundle(tmp_path / "v2")
    assert (manifest.input_name, manifest.logits_output, manifest.embedding_output) == ("pixels", "logits", "embedding")
    assert manifest.trainer["arch"] == "onnx" and manifest.input == spec
    graph = onnx.load(str(tmp_path / "v2" / "model.onnx"), load_external_data=False).graph
    assert "Softmax" not in {n.op_type for n in graph.node}  # the user's old head is dropped
    x = preprocess(frames, spec)
    (feat,) = ort.InferenceSession(str(parent / "model.onnx")).run(["feat"], {"pixels": x})
    logits, embedding = ort.InferenceSession(str(tmp_path / "v2" / "model.onnx")).run(None, {"pixels": x})
    np.testing.assert_allclose(embedding, feat, rtol=1e-5, atol=1e-6)
    assert logits.shape == (32, 4) and trained.export.max_abs_diff_logits < 1e-4


def test_head_mode_refuses_what_it_cannot_keep(versions, tmp_path):
    root, _, _, frames = versions
    labels = [i % 10 for i in range(len(frames))]
    common = dict(frames_bgr=frames, labels=labels, classes=CLASSES, name="fm", version=3, parent_version=2,
                  label_set={})
    with pytest.raises(TrainingError, match="input spec"):
        train_bundle(tmp_path / "a", mode="head", parent_bundle=root / "v2", workdir=tmp_path / "wa",
                     spec=InputSpec(width=64, height=64), **common)
    # A parent whose manifest names an embedding output its model does not have.
    parent = verify_bundle(root / "v2")
    (tmp_path / "wb").mkdir()
    broken = replace(parent, embedding_output="features", files={})
    write_model_bundle(tmp_path / "broken", broken, {n: root / "v2" / n for n in ("model.onnx", "backbone.weights",
                                                                                   "head.weights")},
                       np.zeros((2, 1280), np.float32), tmp_path / "wb")
    with pytest.raises(ExportError, match="features"):
        train_bundle(tmp_path / "b", mode="head", parent_bundle=tmp_path / "broken", workdir=tmp_path / "wc", **common)


def test_full_mobilenet_then_head_only_reuses_its_backbone(tmp_path, fashion_train):
    frames, labels = pick(fashion_train, 4, seed=5)
    spec = InputSpec(width=32, height=32, color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    common = dict(frames_bgr=frames, labels=labels, classes=CLASSES, name="fm", label_set={})
    full = train_bundle(tmp_path / "v1", mode="full", parent_bundle=None, arch="mobilenet_v2", spec=spec,
                        version=1, parent_version=0, workdir=tmp_path / "w1",
                        config=TrainConfig(epochs=2, freeze_blocks=17, patience=0), **common)
    assert full.manifest.trainer["arch"] == "mobilenet_v2" and full.checkpoint.is_file()
    assert full.export.max_abs_diff_logits < 1e-4
    head = train_bundle(tmp_path / "v2", mode="head", parent_bundle=tmp_path / "v1", version=2, parent_version=1,
                        workdir=tmp_path / "w2", **common)
    assert (tmp_path / "v1" / "backbone.weights").read_bytes() == (tmp_path / "v2" / "backbone.weights").read_bytes()
    assert head.manifest.trainer["arch"] == "mobilenet_v2" and head.manifest.input == spec


def test_train_head_is_deterministic_and_can_stop_early():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))
    labels = np.repeat(np.arange(3), 40)
    embeddings = (centres[labels] + rng.normal(0, 1, (120, 8))).astype(np.float32) * 5 + 2
    a, b = train_head(embeddings, labels, 3), train_head(embeddings, labels, 3)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.fit.epochs == HEAD_CONFIG.epochs and a.train_accuracy > 0.95
    stopping = train_head(embeddings, labels, 3, replace(HEAD_CONFIG, epochs=300, patience=5))
    assert stopping.fit.stopped_early and stopping.fit.val_accuracy > 0.9 and stopping.fit.n_val == 24
    with pytest.raises(TrainingError, match=r"\[N, D\]"):
        train_head(embeddings[:, :, None], labels, 3)
