"""The trainer on small synthetic but learnable data: real training, real ONNX export, real
ONNX Runtime, real bundles on disk. Three classes of 28x28 BGR images: horizontal bars,
vertical bars, and a blob, each on noise at a random offset.

Most tests pin `patience=0` (a fixed epoch count, as before early stopping existed); the
early-stopping, determinism and full-mode bundle tests below turn it on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import datetime

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cloud_selector.cnn import SmallCNN
from cloud_selector.head_trainer import initial_bundle, train_bundle
from cloud_selector.trainer import (
    ExportError,
    TrainConfig,
    TrainingError,
    build_bundle,
    cap_bank,
    embed_frames,
    export_onnx,
    load_checkpoint,
    stratified_split,
    train_classifier,
)
from edge_agent.bundle import BundleError, InputSpec, sha256_file, verify_bundle
from edge_agent.preprocess import preprocess
from edge_agent.scoring import NoveltyBank

SPEC = InputSpec(width=28, height=28, color="gray", mean=(0.3,), std=(0.3,))
CLASSES = ("horizontal", "vertical", "blob")
CONFIG = TrainConfig(epochs=20, seed=7, patience=0)


def synthetic(counts=(30, 30, 30), size=28, seed=0):
    """BGR uint8 frames and labels; the class is the shape, position and noise are nuisance."""
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for cls, count in enumerate(counts):
        for _ in range(count):
            img = rng.normal(50, 20, (size, size))
            offset = int(rng.integers(0, 6))
            if cls == 0:
                img[(yy + offset) % 7 < 3] += 150
            elif cls == 1:
                img[(xx + offset) % 7 < 3] += 150
            else:
                cy, cx = rng.integers(7, size - 7, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 36)] += 150
            gray = img.clip(0, 255).astype(np.uint8)
            tint = rng.integers(-10, 10, 3)  # colour noise: the model sees grey, frames are BGR
            frames.append(np.clip(gray[:, :, None].astype(int) + tint, 0, 255).astype(np.uint8))
            labels.append(cls)
    return frames, labels


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def trained(data):
    frames, labels = data
    return train_classifier(frames, labels, len(CLASSES), SPEC, CONFIG)


def test_trains_to_high_accuracy_and_restores_torch_state(data):
    frames, labels = data
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng_state = torch.random.get_rng_state()
    result = train_classifier(frames, labels, len(CLASSES), SPEC, CONFIG)
    assert result.train_accuracy >= 0.95
    assert result.epochs == CONFIG.epochs == len(result.losses)
    assert result.final_loss == result.losses[-1] < result.losses[0]
    assert not result.model.training
    assert result.seconds > 0
    # Training must not leak global torch settings into the rest of the process.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_generalises_to_fresh_samples(trained):
    frames, labels = synthetic(counts=(20, 20, 20), seed=99)
    with torch.no_grad():
        logits, _ = trained.model(torch.from_numpy(preprocess(frames, SPEC)))
    assert (logits.argmax(dim=1).numpy() == np.array(labels)).mean() >= 0.9


def test_class_weighting_lifts_a_rare_class():
    frames, labels = synthetic(counts=(60, 60, 4), seed=3)
    x, rare = torch.from_numpy(preprocess(frames, SPEC)), np.array(labels) == 2
    p_rare = {}
    for balance in (True, False):
        config = TrainConfig(epochs=3, seed=CONFIG.seed, balance_classes=balance, patience=0)
        model = train_classifier(frames, labels, 3, SPEC, config).model
        with torch.no_grad():
            p_rare[balance] = float(torch.softmax(model(x)[0], dim=1)[rare, 2].mean())
    # Early in training, 4 of 124 labels barely move an unweighted loss; weighted, they count.
    assert p_rare[True] > 0.5 > p_rare[False]


def test_same_seed_gives_identical_onnx_outputs(data, tmp_path):
    frames, labels = data
    outputs = []
    for i, seed in enumerate((CONFIG.seed, CONFIG.seed, CONFIG.seed + 1)):
        config = TrainConfig(epochs=4, seed=seed, patience=0)
        model = train_classifier(frames, labels, len(CLASSES), SPEC, config).model
        path = tmp_path / f"m{i}.onnx"
        export_onnx(model, SPEC, path, preprocess(frames[:8], SPEC))
        outputs.append(embed_frames(path, SPEC, frames))
    for same, other in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(same, other)
    assert not np.array_equal(outputs[0][1], outputs[2][1])  # and the seed does matter


def test_export_parity_and_dynamic_batch(trained, data, tmp_path):
    frames, _ = data
    sample = preprocess(frames[::3], SPEC)
    path = tmp_path / "model.onnx"
    report = export_onnx(trained.model, SPEC, path, sample)
    assert report.path == path and report.size_bytes == path.stat().st_size > 0
    assert report.max_abs_diff_logits < 1e-4 and report.max_abs_diff_embedding < 1e-4
    assert not list(tmp_path.glob("*.tmp"))
    onnx.checker.check_model(str(path))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    for n in (1, 5):  # the batch axis is dynamic
        logits, embedding = session.run(None, {"input": sample[:n]})
        assert logits.shape == (n, len(CLASSES)) and embedding.shape == (n, CONFIG.embedding_dim)

    probs, embeddings = embed_frames(path, SPEC, frames, batch_size=16)  # several ORT batches
    assert probs.shape == (len(frames), len(CLASSES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        _, torch_embeddings = trained.model(torch.from_numpy(preprocess(frames, SPEC)))
    np.testing.assert_allclose(embeddings, torch_embeddings.numpy(), rtol=1e-4, atol=1e-4)

    empty_probs, empty_embeddings = embed_frames(path, SPEC, [])
    assert empty_probs.shape == (0, len(CLASSES)) and empty_embeddings.shape == (0, CONFIG.embedding_dim)


def test_export_rejects_a_sample_of_the_wrong_shape(trained, tmp_path):
    wrong = np.zeros((2, 3, 28, 28), np.float32)  # spec is grey: one channel
    with pytest.raises(ExportError, match="sample"):
        export_onnx(trained.model, SPEC, tmp_path / "m.onnx", wrong)
    assert not list(tmp_path.iterdir())


def test_build_bundle_verifies_and_carries_the_novelty_bank(trained, data, tmp_path):
    frames, labels = data
    out = tmp_path / "bundle"
    manifest = build_bundle(
        out, model=trained.model, name="shapes", version=2, parent_version=1, classes=CLASSES,
        spec=SPEC, bank_frames_bgr=frames, label_set={"count": len(labels), "sha256": "ab" * 32},
        metrics={"train_accuracy": trained.train_accuracy}, workdir=tmp_path / "work",
    )
    assert verify_bundle(out) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "novelty_bank.npy"]
    assert (manifest.name, manifest.version, manifest.parent_version) == ("shapes", 2, 1)
    assert manifest.classes == CLASSES and manifest.input == SPEC
    assert manifest.label_set["count"] == len(labels)
    assert datetime.fromisoformat(manifest.created_at).utcoffset().total_seconds() == 0
    assert json.loads((out / "manifest.json").read_text())["metrics"]["train_accuracy"] == trained.train_accuracy

    bank = np.load(out / "novelty_bank.npy")
    assert bank.dtype == np.float32 and bank.shape == (len(frames), CONFIG.embedding_dim)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [manifest.logits_output, manifest.embedding_output]
    # The bank is the labeled set seen through the shipped model: each frame is its own neighbour.
    probs, embeddings = embed_frames(out / "model.onnx", SPEC, frames)
    np.testing.assert_array_equal(embeddings, bank)
    assert NoveltyBank(bank).novelty(embeddings).max() < 1e-5

    with pytest.raises(BundleError, match="exists"):
        build_bundle(out, model=trained.model, name="shapes", version=3, parent_version=2, classes=CLASSES,
                     spec=SPEC, bank_frames_bgr=frames, label_set={}, metrics={}, workdir=tmp_path / "work")


def test_build_bundle_rejects_a_class_list_that_does_not_match_the_model(trained, data, tmp_path):
    frames, _ = data
    with pytest.raises(ExportError, match="classes"):
        build_bundle(tmp_path / "b", model=trained.model, name="x", version=1, parent_version=0,
                     classes=("a", "b"), spec=SPEC, bank_frames_bgr=frames[:4], label_set={}, metrics={},
                     workdir=tmp_path / "work")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("frames", "labels", "num_classes", "match"),
    [
        ([], [], 3, "no training frames"),
        ([np.zeros((28, 28, 3), np.uint8)] * 2, [0], 3, "2 frames but 1 labels"),
        ([np.zeros((28, 28, 3), np.uint8)] * 2, [0, 3], 3, "outside"),
        ([np.zeros((28, 28, 3), np.uint8)] * 2, [0, -1], 3, "outside"),
        ([np.zeros((28, 28, 3), np.uint8)] * 2, [0.0, 1.5], 3, "integers"),
        ([np.zeros((28, 28, 3), np.uint8), "not an image"], [0, 1], 3, "frame 1"),
        ([np.zeros((28, 28, 3), np.uint8)], [0], 0, "num_classes"),
    ],
)
def test_bad_training_input_is_a_clear_error(frames, labels, num_classes, match):
    with pytest.raises(TrainingError, match=match):
        train_classifier(frames, labels, num_classes, SPEC, CONFIG)


@pytest.mark.parametrize("config", [TrainConfig(epochs=0), TrainConfig(batch_size=0), TrainConfig(lr=0.0),
                                    TrainConfig(val_fraction=1.0), TrainConfig(patience=-1)])
def test_bad_config_is_a_clear_error(data, config):
    frames, labels = data
    with pytest.raises(TrainingError, match="TrainConfig"):
        train_classifier(frames, labels, len(CLASSES), SPEC, config)
    assert issubclass(TrainingError, ValueError)


def test_progress_bar_and_larger_colour_inputs(capsys):
    frames, labels = synthetic(counts=(4, 4, 4), size=64)
    spec = InputSpec(width=64, height=64, color="rgb", mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3))
    result = train_classifier(frames, labels, 3, spec, TrainConfig(epochs=2), progress=True)
    assert result.epochs == 2
    assert "train" in capsys.readouterr().err
    logits, embedding = SmallCNN(5, 3, embedding_dim=16)(torch.zeros(2, 3, 96, 96))
    assert logits.shape == (2, 5) and embedding.shape == (2, 16)


def test_same_seed_gives_identical_weights_with_early_stopping(data):
    frames, labels = data
    config = TrainConfig(epochs=6, seed=3, patience=2)
    first, second = (train_classifier(frames, labels, len(CLASSES), SPEC, config) for _ in range(2))
    assert first.fit.n_val >= 10  # the validation split is in play
    assert first.data_sha256 == second.data_sha256
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_early_stopping_stops_on_an_easy_set_and_keeps_the_best_weights():
    frames, labels = synthetic(counts=(40, 40, 40), seed=5)
    config = TrainConfig(epochs=60, seed=1, patience=3)
    result = train_classifier(frames, labels, len(CLASSES), SPEC, config)
    fit = result.fit
    assert fit.stopped_early and fit.epochs < config.epochs and result.epochs == fit.epochs
    assert fit.best_epoch == fit.epochs - config.patience
    assert fit.val_accuracy >= 0.95 and len(fit.val_losses) == fit.epochs
    assert (fit.n_train, fit.n_val) == (96, 24)  # 20% of each class held out
    # The weights kept are the best epoch's: re-scoring the same validation split agrees.
    _, val = stratified_split(np.array(labels), config.val_fraction, np.random.default_rng(config.seed))
    with torch.no_grad():
        logits, _ = result.model(torch.from_numpy(preprocess([frames[i] for i in val], SPEC)))
    assert float((logits.argmax(1).numpy() == np.array(labels)[val]).mean()) == pytest.approx(fit.val_accuracy)


def test_small_sets_train_on_everything():
    frames, labels = synthetic(counts=(6, 6, 6), seed=2)  # 20% would hold out fewer than 10
    result = train_classifier(frames, labels, len(CLASSES), SPEC, TrainConfig(epochs=3))
    assert (result.fit.n_train, result.fit.n_val, result.fit.val_accuracy) == (18, 0, None)
    assert result.epochs == result.fit.best_epoch == 3


def test_stratified_split_keeps_every_class_in_training():
    y = np.array([0] * 10 + [1] * 5 + [2])
    train, val = stratified_split(y, 0.2, np.random.default_rng(0))
    assert sorted(np.concatenate([train, val])) == list(range(len(y)))
    assert np.bincount(y[val], minlength=3).tolist() == [2, 1, 0]


def test_full_mode_bundle_with_checkpoint(data, tmp_path):
    frames, labels = data
    config = TrainConfig(epochs=5, seed=4, patience=2)
    label_set = {"count": len(labels), "sha256": "cd" * 32}
    trained = train_bundle(
        tmp_path / "v1", mode="full", frames_bgr=frames, labels=labels, classes=CLASSES, parent_bundle=None,
        arch="small_cnn", spec=SPEC, name="shapes", version=1, parent_version=0, label_set=label_set,
        config=config, workdir=tmp_path / "work",
    )
    out = tmp_path / "v1"
    manifest = verify_bundle(out)
    assert manifest == trained.manifest and trained.mode == "full"
    assert sorted(manifest.files) == ["backbone.weights", "head.weights", "model.onnx", "novelty_bank.npy"]
    assert manifest.trainer == {"mode": "full", "arch": "small_cnn", "config": asdict(config),
                                "backbone_sha256": sha256_file(out / "backbone.weights")}
    assert manifest.metrics["epochs"] == trained.metrics["epochs"] <= config.epochs
    assert trained.export.max_abs_diff_logits < 1e-4 and trained.export.max_abs_diff_embedding < 1e-4
    assert trained.export.latency_ms > 0 and trained.export.bank_rows == len(frames)
    assert trained.export.sizes["head.weights"] < 1024 < trained.export.sizes["backbone.weights"]

    # The checkpoint: a plain state dict plus what it is and what it was trained on.
    state, meta = load_checkpoint(trained.checkpoint)
    assert meta["config"] == asdict(config) and meta["seed"] == 4 and meta["arch"] == "small_cnn"
    assert meta["classes"] == list(CLASSES) and meta["label_set"] == label_set
    assert meta["epochs_run"] == trained.metrics["epochs"]
    assert meta["best_val_accuracy"] == trained.metrics["val_accuracy"] is not None
    x = preprocess(frames, SPEC)
    assert meta["data_sha256"] == hashlib.sha256(x.tobytes() + np.asarray(labels, np.int64).tobytes()).hexdigest()
    model = SmallCNN(len(CLASSES), SPEC.channels, config.embedding_dim)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        torch_logits, _ = model(torch.from_numpy(x))
    session = ort.InferenceSession(str(out / "model.onnx"))  # as a device opens it: external data beside it
    np.testing.assert_allclose(session.run(["logits"], {"input": x})[0], torch_logits.numpy(), atol=1e-4)

    with pytest.raises(BundleError, match="exists"):
        train_bundle(out, mode="full", frames_bgr=frames, labels=labels, classes=CLASSES, parent_bundle=None,
                     arch="small_cnn", spec=SPEC, name="shapes", version=2, parent_version=1, label_set={},
                     config=config, workdir=tmp_path / "work2")


@pytest.mark.parametrize(("mode", "arch", "match"), [("bogus", "small_cnn", "mode"), ("full", "resnet", "arch"),
                                                      ("head", "small_cnn", "parent"), ("external", "small_cnn", "command")])
def test_train_bundle_rejects_bad_modes_clearly(data, tmp_path, mode, arch, match):
    frames, labels = data
    with pytest.raises(TrainingError, match=match):
        train_bundle(tmp_path / "b", mode=mode, frames_bgr=frames[:12], labels=labels[:12], classes=CLASSES,
                     parent_bundle=None, arch=arch, spec=SPEC, name="x", version=1, parent_version=0,
                     label_set={}, config=TrainConfig(epochs=1), workdir=tmp_path / "w")
    assert not (tmp_path / "b").exists()


def test_cap_bank_is_a_seeded_ordered_sample():
    bank = np.arange(50, dtype=np.float32).reshape(25, 2)
    assert cap_bank(bank, None) is bank and cap_bank(bank, 25) is bank
    capped = cap_bank(bank, 10, seed=3)
    assert capped.shape == (10, 2) and np.all(np.diff(capped[:, 0]) > 0)
    np.testing.assert_array_equal(capped, cap_bank(bank, 10, seed=3))
    assert not np.array_equal(capped, cap_bank(bank, 10, seed=4))


def test_initial_small_cnn_bundle_is_a_seed_trained_from_scratch(data, tmp_path):
    frames, labels = data
    trained = initial_bundle(tmp_path / "v1", frames_bgr=frames, labels=labels, classes=CLASSES, arch="small_cnn",
                             spec=SPEC, name="shapes", label_set={}, config=TrainConfig(epochs=2, patience=0),
                             workdir=tmp_path / "w")
    assert trained.manifest.trainer["mode"] == "seed" and trained.manifest.trainer["arch"] == "small_cnn"
    assert trained.manifest.version == 1 and trained.checkpoint.is_file()
