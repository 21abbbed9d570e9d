"""Model bundle format: write/verify round trip on real files, tampering, unsafe paths, bad manifests.

verify_bundle only checks the manifest and the sha256 of every listed file, so model.onnx can be
arbitrary bytes here; ONNX Runtime loading is the runtime's business.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edge_agent.bundle import (
    FORMAT,
    MANIFEST_FILE,
    BundleError,
    InputSpec,
    Manifest,
    check_relative_path,
    load_manifest,
    sha256_file,
    verify_bundle,
    write_bundle,
)


def make_manifest(**overrides) -> Manifest:
    fields = dict(
        name="parts-classifier",
        version=3,
        classes=("bolt", "nut", "washer"),
        input=InputSpec(width=64, height=48, color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        parent_version=2,
        label_set={"count": 120, "sha256": "ab" * 32},
        metrics={"accuracy": 0.93},
        created_at="2024-01-01T00:00:00Z",
    )
    fields.update(overrides)
    return Manifest(**fields)


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    model = src / "model.onnx"
    model.write_bytes(b"\x08\x07not really onnx\x00" * 50)
    bank = src / "bank.npy"
    np.save(bank, np.arange(12, dtype=np.float32).reshape(3, 4))
    return {"model.onnx": model, "novelty_bank.npy": bank}


@pytest.fixture
def bundle(tmp_path, sources):
    bundle_dir = tmp_path / "bundle"
    write_bundle(bundle_dir, make_manifest(), sources)
    return bundle_dir


# --- round trip ------------------------------------------------------------------------------


def test_write_then_verify_round_trip(tmp_path, sources):
    bundle_dir = tmp_path / "out" / "v3"
    written = write_bundle(bundle_dir, make_manifest(), sources)
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["manifest.json", "model.onnx", "novelty_bank.npy"]
    # the manifest lists the sha256 of every file, computed independently here
    for rel, src in sources.items():
        assert written.files[rel] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert (bundle_dir / rel).read_bytes() == src.read_bytes()
    verified = verify_bundle(bundle_dir)
    assert verified == written
    assert verified.to_dict() == written.to_dict()
    assert verified.classes == ("bolt", "nut", "washer")
    assert verified.input.mean == (0.485, 0.456, 0.406)
    assert verified.input.channels == 3
    # the bank file is still a loadable array
    np.testing.assert_array_equal(np.load(bundle_dir / "novelty_bank.npy"), np.arange(12, dtype=np.float32).reshape(3, 4))


def test_manifest_json_on_disk(bundle):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    assert data["format"] == FORMAT
    assert data["version"] == 3
    assert data["classes"] == ["bolt", "nut", "washer"]
    assert set(data["files"]) == {"model.onnx", "novelty_bank.npy"}
    assert not (bundle / (MANIFEST_FILE + ".tmp")).exists()


def test_files_in_subdirectories(tmp_path, sources):
    head = tmp_path / "head.onnx"
    head.write_bytes(b"head bytes")
    files = {**sources, "heads/head.onnx": head}
    write_bundle(tmp_path / "b", make_manifest(), files)
    m = verify_bundle(tmp_path / "b")
    assert m.files["heads/head.onnx"] == sha256_file(head)


def test_write_bundle_refuses_existing_directory(tmp_path, sources):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        write_bundle(tmp_path / "exists", make_manifest(), sources)


def test_write_bundle_requires_model_and_bank(tmp_path, sources):
    with pytest.raises(BundleError, match="novelty_bank.npy"):
        write_bundle(tmp_path / "b", make_manifest(), {"model.onnx": sources["model.onnx"]})


# --- tampering, missing files ----------------------------------------------------------------


def test_tampered_file_rejected(bundle):
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[10] ^= 0x01  # one bit
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256") as exc:
        verify_bundle(bundle)
    assert "model.onnx" in str(exc.value)


def test_tampered_manifest_hash_rejected(bundle):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["files"]["novelty_bank.npy"] = "0" * 64
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="sha256 mismatch for novelty_bank.npy"):
        verify_bundle(bundle)


def test_missing_file_rejected(bundle):
    (bundle / "novelty_bank.npy").unlink()
    with pytest.raises(BundleError, match="missing novelty_bank.npy"):
        verify_bundle(bundle)


def test_listed_path_that_is_a_directory_rejected(bundle):
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").mkdir()
    with pytest.raises(BundleError, match="missing model.onnx"):
        verify_bundle(bundle)


def test_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        verify_bundle(tmp_path / "empty")


def test_manifest_not_json(bundle):
    (bundle / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        load_manifest(bundle)


# --- unsafe paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../x", "a/../../x", "..", "/abs", "/etc/passwd", "manifest.json", "", "a\\..\\x"])
def test_unsafe_paths_rejected(path):
    with pytest.raises(BundleError, match="unsafe or reserved"):
        check_relative_path(path)


@pytest.mark.parametrize("path", ["model.onnx", "heads/head.onnx", "a/b/c.npy", "manifest.json.bak"])
def test_safe_paths_accepted(path):
    check_relative_path(path)


@pytest.mark.parametrize("path", ["../escape.bin", "/tmp/abs.bin", "manifest.json"])
def test_write_bundle_rejects_unsafe_paths(tmp_path, sources, path):
    extra = tmp_path / "extra.bin"
    extra.write_bytes(b"x")
    with pytest.raises(BundleError, match="unsafe or reserved"):
        write_bundle(tmp_path / "b", make_manifest(), {path: extra, **sources})
    assert not (tmp_path / "escape.bin").exists()


@pytest.mark.parametrize("path", ["../evil.so", "/abs/evil.so", "manifest.json"])
def test_manifest_listing_unsafe_path_rejected(bundle, path):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["files"][path] = "0" * 64
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="unsafe or reserved"):
        verify_bundle(bundle)


def test_manifest_model_file_unsafe_rejected(bundle):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["model_file"] = "../model.onnx"
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="unsafe or reserved"):
        verify_bundle(bundle)


# --- malformed manifests ---------------------------------------------------------------------


def good_dict() -> dict:
    return make_manifest(files={"model.onnx": "a" * 64, "novelty_bank.npy": "b" * 64}).to_dict()


def test_good_dict_parses():
    m = Manifest.from_dict(good_dict())
    assert m.version == 3 and m.input.width == 64


def edit(path: tuple, value):
    d = good_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("format",), "edgeflywheel.bundle/2", "format"),
        (("format",), KeyError, "format"),
        (("surprise",), 1, "unknown keys"),
        (("version",), 0, "version must be >= 1"),
        (("version",), -4, "version must be >= 1"),
        (("input", "color"), "cmyk", "input.color"),
        (("input", "layout"), "NWHC", "layout"),
        (("input", "resize"), "squash", "resize"),
        (("novelty_k",), 0, "novelty_k"),
        (("input", "width"), 0, "out of range"),
        (("input", "height"), 5000, "out of range"),
        (("input", "width"), KeyError, "malformed"),
        (("input",), 5, "malformed"),
        (("input", "mean"), [0.5, 0.5], "input.mean"),
        (("input", "std"), [1.0, 0.0, 1.0], "std must not contain 0"),
        (("classes",), [], "no classes"),
        (("classes",), KeyError, "malformed"),
        (("files",), {"model.onnx": "a" * 64}, "novelty_bank.npy"),
    ],
)
def test_malformed_manifest_rejected(path, value, match):
    with pytest.raises(BundleError, match=match):
        Manifest.from_dict(edit(path, value))


@pytest.mark.parametrize("value", [None, [], "manifest", 3])
def test_manifest_that_is_not_an_object(value):
    with pytest.raises(BundleError, match="format"):
        Manifest.from_dict(value)


def test_malformed_manifest_on_disk_rejected(bundle):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["version"] = 0
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="version"):
        verify_bundle(bundle)


def test_gray_input_takes_one_mean():
    d = edit(("input", "color"), "gray")
    d["input"]["mean"], d["input"]["std"] = [0.5], [0.25]
    m = Manifest.from_dict(d)
    assert m.input.channels == 1
    d["input"]["mean"] = [0.5, 0.5, 0.5]
    with pytest.raises(BundleError, match="input.mean needs 1 or 1"):
        Manifest.from_dict(d)


# --- known bugs ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2", None])
def test_non_integer_version_is_bundle_error(version):
    with pytest.raises(BundleError):
        Manifest.from_dict(edit(("version",), version))


def test_files_as_list_is_bundle_error(bundle):
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    data["files"] = sorted(data["files"])
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError):
        verify_bundle(bundle)


def test_classes_as_string_rejected():
    with pytest.raises(BundleError):
        Manifest.from_dict(edit(("classes",), "cat"))
