"""The external trainer hook with real subprocesses: a tiny user training script (it trains our
SmallCNN for a few epochs on the exported PNGs and exports ONNX), and commands that fail,
hang, write nothing or write a model for the wrong classes."""

from __future__ import annotations

import csv
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from cloud_selector.external_trainer import (
    ExternalTrainerError,
    ExternalTrainerTimeout,
    export_labeled_set,
    train_external,
)
from cloud_selector.head_trainer import train_bundle
from cloud_selector.onnx_compose import ExportError
from edge_agent.bundle import InputSpec, verify_bundle
from edge_agent.preprocess import preprocess

SPEC = InputSpec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,))
CLASSES = ("T-shirt", "Trouser", "Bag")

# What a user might write: read the export, train, write ONNX where told. Extra classes and
# other output names come from its arguments so that one script covers the failure cases.
USER_SCRIPT = '''
import csv, json, os, sys
from pathlib import Path
import cv2, numpy as np, torch, torch.nn.functional as F
from cloud_selector.cnn import SmallCNN
from edge_agent.bundle import InputSpec
from edge_agent.preprocess import preprocess

dataset, output = Path(sys.argv[1]), sys.argv[2]
extra_classes, names = int(sys.argv[3]), sys.argv[4].split(",")
assert dataset == Path(os.environ["EDGEFLYWHEEL_DATASET"]) and output == os.environ["EDGEFLYWHEEL_OUTPUT"]
spec = InputSpec(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in json.loads(os.environ["EDGEFLYWHEEL_INPUT_SPEC"]).items()})
classes = (dataset / "classes.txt").read_text().splitlines()
rows = list(csv.DictReader(open(dataset / "labels.csv")))
frames = [cv2.imread(str(dataset / r["file"]), cv2.IMREAD_UNCHANGED) for r in rows]
x = torch.from_numpy(preprocess(frames, spec))
y = torch.tensor([classes.index(r["label"]) for r in rows])
torch.manual_seed(0)
model = SmallCNN(len(classes) + extra_classes, spec.channels, embedding_dim=16)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(5):
    loss = F.cross_entropy(model(x)[0], y)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.3f}", file=sys.stderr)
model.eval()
torch.onnx.export(model, (x[:1],), output, dynamo=False, opset_version=17, input_names=["input"],
                  output_names=names, dynamic_axes={n: {0: "n"} for n in ["input", *names]})
'''


@pytest.fixture(scope="module")
def data(fashion_train):
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(fashion_train.labels == c), 8, replace=False) for c in (0, 1, 8)])
    return [fashion_train.images[i] for i in idx], [i // 8 for i in range(len(idx))]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "user_train.py"
    path.write_text(USER_SCRIPT)
    return path


def command(script, extra_classes=0, names="logits,embedding"):
    return [sys.executable, str(script), "{dataset}", "{output}", str(extra_classes), names]


def test_exported_dataset_layout(tmp_path, data):
    frames, labels = data
    colour = [cv2.cvtColor(frames[0], cv2.COLOR_GRAY2BGR)] + frames[1:]  # a BGR frame too
    root = export_labeled_set(tmp_path / "ds", colour, labels, CLASSES)
    assert (root / "classes.txt").read_text().splitlines() == list(CLASSES)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    assert len(rows) == len(frames) and rows[0] == {"file": "images/000000.png", "label": "T-shirt"}
    assert [CLASSES.index(r["label"]) for r in rows] == labels
    np.testing.assert_array_equal(cv2.imread(str(root / rows[0]["file"])), colour[0])  # PNG: lossless
    np.testing.assert_array_equal(cv2.imread(str(root / rows[5]["file"]), cv2.IMREAD_UNCHANGED), frames[5])


def test_a_user_script_trains_and_its_model_becomes_a_bundle(tmp_path, data, script):
    frames, labels = data
    trained = train_bundle(tmp_path / "v1", mode="external", frames_bgr=frames, labels=labels, classes=CLASSES,
                           parent_bundle=None, spec=SPEC, name="ext", version=1, parent_version=0,
                           label_set={"count": len(labels)}, workdir=tmp_path / "w",
                           external_command=command(script), external_timeout_s=120)
    manifest = verify_bundle(tmp_path / "v1")
    assert manifest.trainer["mode"] == "external" and manifest.trainer["command"] == command(script)
    assert sorted(manifest.files) == ["model.onnx", "novelty_bank.npy"]
    assert trained.export.max_abs_diff_logits is None and trained.checkpoint is None
    assert trained.export.bank_rows == len(frames) and manifest.embedding_dim == 16
    session = ort.InferenceSession(str(tmp_path / "v1" / "model.onnx"))
    logits, _ = session.run(None, {"input": preprocess(frames, SPEC)})
    assert logits.shape == (len(frames), 3)
    assert "epoch 4 loss" in (tmp_path / "w" / "external" / "stderr.log").read_text()


def test_other_output_names_through_the_mapping(tmp_path, data, script):
    frames, labels = data
    result = train_external(command(script, names="scores,feat"), frames, labels, CLASSES, SPEC, tmp_path / "w",
                            timeout_s=120, outputs=("scores", "feat"))
    assert result.embeddings.shape == (len(frames), 16) and result.model_path.is_file()
    with pytest.raises(ExportError, match="no output"):
        train_external(command(script, names="scores,feat"), frames, labels, CLASSES, SPEC, tmp_path / "w2",
                       timeout_s=120)


def test_a_model_for_the_wrong_classes_is_refused(tmp_path, data, script):
    frames, labels = data
    with pytest.raises(ExportError, match="3 classes"):
        train_external(command(script, extra_classes=1), frames, labels, CLASSES, SPEC, tmp_path / "w", timeout_s=120)


def test_a_failing_command_reports_its_exit_status_and_stderr(tmp_path, data):
    frames, labels = data
    failing = [sys.executable, "-c", "import sys; print('loading', file=sys.stderr); "
               "sys.exit('CUDA out of memory in layer 3')"]
    with pytest.raises(ExternalTrainerError, match=r"status 1(.|\n)*CUDA out of memory") as info:
        train_external(failing, frames, labels, CLASSES, SPEC, tmp_path / "w", timeout_s=60)
    assert info.value.returncode == 1 and info.value.stderr_tail.endswith("CUDA out of memory in layer 3")


def test_a_command_past_its_timeout_is_killed(tmp_path, data):
    frames, labels = data
    started = time.monotonic()
    with pytest.raises(ExternalTrainerTimeout, match="1 s timeout"):
        train_external([sys.executable, "-c", "import time; time.sleep(60)"], frames, labels, CLASSES, SPEC,
                       tmp_path / "w", timeout_s=1)
    assert time.monotonic() - started < 15
    assert issubclass(ExternalTrainerTimeout, ExternalTrainerError)


@pytest.mark.parametrize(("argv", "match"), [
    (["true"], "wrote no model"),
    (["/nonexistent/trainer"], "cannot start"),
    (["echo", "{unknown}"], "placeholder"),
    ([], "no external command"),
])
def test_commands_that_produce_nothing(tmp_path, data, argv, match):
    frames, labels = data
    with pytest.raises(ExternalTrainerError, match=match):
        train_external(argv, frames, labels, CLASSES, SPEC, tmp_path / "w", timeout_s=30)
