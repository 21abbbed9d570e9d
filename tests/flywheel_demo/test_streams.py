"""The simulated fleet and the dataset loaders, on real files: videos are written with OpenCV's
MJPG writer and read back with VideoCapture, datasets are real IDX/PNG files on disk."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from flywheel_demo.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    Dataset,
    DatasetError,
    load_fashion_mnist,
    load_image_folder,
)
from flywheel_demo.streams import (
    StreamError,
    StreamPlan,
    class_mix,
    load_ground_truth,
    plan_stream,
    render_clean,
    render_frame,
    write_stream_video,
)

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)


def synthetic_dataset(n: int = 120, n_classes: int = 4, seed: int = 0) -> Dataset:
    """Smooth random grey blobs: every item looks different, like distinct real objects."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 7, 7)).astype(np.uint8)
    images = np.stack([cv2.resize(s, (28, 28), interpolation=cv2.INTER_CUBIC) for s in small])
    labels = np.arange(n, dtype=np.int64) % n_classes
    return Dataset(images=images, labels=labels, classes=tuple(f"c{i}" for i in range(n_classes)))


def make_plan(ds: Dataset, n_items: int = 20, seed: int = 1) -> StreamPlan:
    mix = class_mix(1, len(ds.classes), seed=seed)[0]
    items = plan_stream(ds.labels, mix, n_items, rng=np.random.default_rng(seed))
    return StreamPlan(device_id="cam-0", round=2, items=items, fps=15.0)


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, count


def shift_tolerant_distance(a: np.ndarray, b: np.ndarray, s: int = 3) -> float:
    """Mean absolute grey difference, minimised over shifts of up to s pixels."""
    ga = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float32)[s:-s, s:-s]
    gb = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.float32)
    h, w = gb.shape
    return min(
        float(np.abs(ga - gb[s + dy : h - s + dy, s + dx : w - s + dx]).mean())
        for dy in range(-s, s + 1)
        for dx in range(-s, s + 1)
    )


def test_video_reads_back_with_frame_count_size_and_truth(tmp_path: Path) -> None:
    ds = synthetic_dataset()
    plan = make_plan(ds)
    out = write_stream_video(tmp_path / "cam-0" / "r2.avi", ds, plan, frame_size=56, seed=7)
    frames, count = read_video(out)
    assert len(frames) == count == plan.n_frames
    assert all(f.shape == (56, 56, 3) and f.dtype == np.uint8 for f in frames)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert (doc["device_id"], doc["round"], doc["fps"], doc["frame_size"]) == ("cam-0", 2, 15.0, 56)
    truth = load_ground_truth(out.with_suffix(".json"))
    assert sorted(truth) == list(range(plan.n_frames))
    for item in plan.items:
        for f in range(item.start_frame, item.start_frame + item.n_frames):
            assert truth[f] == (item.label, item.index_in_dataset)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "r2.avi",
        "r2.json",
    ]  # no temp files left


def test_consecutive_frames_of_one_item_are_near_duplicates_and_items_differ(
    tmp_path: Path,
) -> None:
    ds = synthetic_dataset()
    plan = make_plan(ds, n_items=30)
    out = write_stream_video(tmp_path / "v.avi", ds, plan, seed=3)
    frames, _ = read_video(out)
    truth = load_ground_truth(out.with_suffix(".json"))
    same, diff = [], []
    for i in range(len(frames) - 1):
        d = shift_tolerant_distance(frames[i], frames[i + 1])
        (same if truth[i][1] == truth[i + 1][1] else diff).append(d)
        raw = np.abs(frames[i].astype(np.int16) - frames[i + 1]).max()
        assert raw > 0, "jitter must make every frame differ from the previous one"
    assert same and diff
    assert max(same) < min(diff)


@needs_fashion
def test_fashion_mnist_stream_separates_repeats_from_other_items(tmp_path: Path) -> None:
    ds = load_fashion_mnist("test")
    plan = make_plan(ds, n_items=60)
    out = write_stream_video(tmp_path / "v.avi", ds, plan, seed=0)
    frames, _ = read_video(out)
    truth = load_ground_truth(out.with_suffix(".json"))
    same, diff = [], []
    for i in range(len(frames) - 1):
        d = shift_tolerant_distance(frames[i], frames[i + 1])
        (same if truth[i][1] == truth[i + 1][1] else diff).append(d)
    assert np.percentile(same, 95) < np.percentile(diff, 5)


def test_render_frame_places_scales_and_shifts() -> None:
    item = np.zeros((28, 28), dtype=np.uint8)
    item[10:18, 10:18] = 200
    clean = render_clean(item, 56)
    assert clean.shape == (56, 56, 3) and clean.dtype == np.uint8
    assert np.array_equal(clean[:, :, 0], clean[:, :, 2])  # grey in, grey BGR out
    ys, xs = np.nonzero(clean[:, :, 0] > 100)
    assert abs(ys.mean() - 27.5) < 1 and abs(xs.mean() - 27.5) < 1  # centred
    shifted = render_frame(item, frame_size=56, dx=3, dy=-2, brightness=1.0, noise_std=0.0, rng=None)
    ys2, xs2 = np.nonzero(shifted[:, :, 0] > 100)
    assert (xs2.mean() - xs.mean(), ys2.mean() - ys.mean()) == pytest.approx((3, -2))
    dim = render_frame(item, frame_size=56, dx=0, dy=0, brightness=0.5, noise_std=0.0, rng=None)
    assert dim.max() == pytest.approx(clean.max() * 0.5, abs=1)
    off = render_frame(item, frame_size=56, dx=80, dy=80, brightness=1.0, noise_std=0.0, rng=None)
    assert off.max() == 0  # shifted out of view: clipped, no crash
    colour = np.zeros((40, 20, 3), dtype=np.uint8)
    colour[:, :, 0] = 255  # blue in BGR stays blue
    frame = render_clean(colour, 50)
    assert frame[25, 25, 0] == 255 and frame[25, 25, 2] == 0
    with pytest.raises(ValueError):
        render_frame(item, frame_size=56, dx=0, dy=0, brightness=1.0, noise_std=2.0, rng=None)


def test_class_mix_rows_sum_to_one_with_absent_classes_zero() -> None:
    mix = class_mix(6, 10, seed=5, concentration=0.3, absent=(2, 9))
    assert mix.shape == (6, 10)
    assert np.allclose(mix.sum(axis=1), 1.0)
    assert (mix[:, [2, 9]] == 0).all() and (mix >= 0).all()
    assert np.array_equal(mix, class_mix(6, 10, seed=5, concentration=0.3, absent=(2, 9)))
    assert not np.array_equal(mix, class_mix(6, 10, seed=6, concentration=0.3, absent=(2, 9)))
    tiny = class_mix(50, 10, seed=0, concentration=0.01, absent=range(9))  # mass often all on absent
    assert np.allclose(tiny, np.eye(10)[9])
    with pytest.raises(ValueError):
        class_mix(2, 3, seed=0, absent=(0, 1, 2))


def test_plan_never_reuses_indices_and_respects_the_mix() -> None:
    labels = np.arange(300, dtype=np.int64) % 3
    mix = np.array([0.5, 0.5, 0.0])
    used: set[int] = {0, 1, 3, 4}
    before = set(used)
    rng = np.random.default_rng(0)
    plans = [plan_stream(labels, mix, 40, rng=rng, used=used, run_length=(2, 5)) for _ in range(4)]
    indices = [it.index_in_dataset for plan in plans for it in plan]
    assert len(indices) == len(set(indices)) == 160
    assert not set(indices) & before and used == before | set(indices)
    for plan in plans:
        assert plan[0].start_frame == 0
        for a, b in zip(plan, plan[1:]):
            assert b.start_frame == a.start_frame + a.n_frames
        for it in plan:
            assert 2 <= it.n_frames <= 5 and it.label == labels[it.index_in_dataset] != 2
    # 200 items in classes 0 and 1, 4 pre-used, 160 drawn: 36 left, then the mix is exhausted.
    assert len(plan_stream(labels, mix, 36, rng=rng, used=used)) == 36
    with pytest.raises(StreamError):
        plan_stream(labels, mix, 1, rng=rng, used=used)


def test_everything_is_deterministic_given_seeds(tmp_path: Path) -> None:
    ds = synthetic_dataset()
    a, b = make_plan(ds, seed=4), make_plan(ds, seed=4)
    assert a == b and a != make_plan(ds, seed=5)
    va = write_stream_video(tmp_path / "a.avi", ds, a, seed=9)
    vb = write_stream_video(tmp_path / "b.avi", ds, b, seed=9)
    vc = write_stream_video(tmp_path / "c.avi", ds, b, seed=10)
    fa, fb, fc = (read_video(v)[0] for v in (va, vb, vc))
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert not all(np.array_equal(x, y) for x, y in zip(fa, fc))


def test_unwritable_video_raises_stream_error(tmp_path: Path) -> None:
    ds = synthetic_dataset()
    with pytest.raises(StreamError, match="MJPG"):
        write_stream_video(tmp_path / "v.notacontainer", ds, make_plan(ds), seed=0)
    assert not (tmp_path / "v.json").exists()
    plan = make_plan(ds)
    broken = StreamPlan(plan.device_id, plan.round, plan.items[:1] + plan.items[2:], plan.fps)
    with pytest.raises(StreamError, match="starts at frame"):
        write_stream_video(tmp_path / "gap.avi", ds, broken, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial video, no sidecar


@needs_fashion
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_loads(split: str, n: int) -> None:
    ds = load_fashion_mnist(split)  # type: ignore[arg-type]
    assert len(ds) == n and ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(10))
    assert ds.classes == FASHION_MNIST_CLASSES


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_loader_reports_corrupt_and_missing_files(tmp_path: Path) -> None:
    images, labels = np.zeros((5, 28, 28), np.uint8), np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, labels)
    assert len(load_fashion_mnist("test", root=tmp_path)) == 5
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(bad, 0x803, labels.reshape(5, 1, 1))  # image magic in the labels file
    with pytest.raises(
        DatasetError,
        match=r"t10k-labels-idx1-ubyte\.gz.*magic.*apt-get install dataset-fashion-mnist",
    ):
        load_fashion_mnist("test", root=tmp_path)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="gzip"):
        load_fashion_mnist("test", root=tmp_path)
    write_idx(bad, 0x801, labels)
    data = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(data[:-2]))  # truncated payload
    with pytest.raises(DatasetError, match="truncated"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is missing.*apt-get install"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_fashion_mnist("test", root=tmp_path / "nowhere")


def test_image_folder_loads_bgr_skips_unreadable_and_checks_sizes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name, bgr in [("zebra", (0, 0, 255)), ("apple", (255, 0, 0))]:
        (root / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((16, 12, 3), bgr, np.uint8))
    (root / "apple" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "apple" / "README.txt").write_text("not an image, ignored")
    ds = load_image_folder(root)
    assert ds.classes == ("apple", "zebra") and ds.skipped == 1
    assert ds.images.shape == (6, 16, 12, 3) and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.images[0, 0, 0].tolist() == [255, 0, 0] and ds.images[3, 0, 0].tolist() == [0, 0, 255]
    cv2.imwrite(str(root / "zebra" / "big.png"), np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(DatasetError, match="size="):
        load_image_folder(root)
    assert load_image_folder(root, size=(20, 10)).images.shape == (7, 10, 20, 3)
    shutil.rmtree(root)
    root.mkdir()
    with pytest.raises(DatasetError, match="no class sub-directories"):
        load_image_folder(root)
