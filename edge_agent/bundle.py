"""The model bundle format, shared by the device (reads, verifies) and the cloud (writes).

A bundle is a directory:

    manifest.json        what the model is and how to run it (see `Manifest`)
    manifest.sig         the detached Ed25519 signature over manifest.json (optional; see below)
    model.onnx           the ONNX graph with outputs for logits [N, C] and embedding [N, D]
    novelty_bank.npy     float32 [M, D] reference embeddings (the labeled set's)

The manifest lists the sha256 of every other file; a device refuses a bundle whose files are
missing or do not match (`verify_bundle`). manifest.json and manifest.sig are reserved names
that the manifest cannot list (the manifest cannot hash itself, nor the signature over it).

manifest.sig is one JSON object (UTF-8, written by `edge_agent.signing.sign_bundle`):

    {"format": "edgeflywheel.sig/1", "algorithm": "ed25519",
     "key_id": "<first 16 hex digits of sha256 of the raw 32-byte public key>",
     "signature": "<base64 of the 64-byte Ed25519 signature over the exact bytes of manifest.json>"}

Signing the manifest's bytes, not its parsed content, means no canonical JSON is needed, and
because the manifest holds the sha256 of every other file, one signature covers the whole
bundle. The key id only picks which trusted key to check with (a device may trust several
during a key rotation) and names the signer in refusals; it is not itself trusted. How
devices decide what to accept is `edge_agent.signing`'s business: this module knows the
names and the hashes only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

FORMAT = "edgeflywheel.bundle/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
RESERVED_FILES = (MANIFEST_FILE, SIGNATURE_FILE)
COLOR_ORDERS = ("gray", "rgb", "bgr")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
LAYOUTS = ("NCHW", "NHWC")


class BundleError(Exception):
    """A bundle is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class InputSpec:
    """How to turn a BGR uint8 frame into the model's input tensor."""

    width: int
    height: int
    color: str = "rgb"  # channel order the model expects: gray | rgb | bgr
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"  # NCHW | NHWC
    # stretch: resize to width x height ignoring aspect; letterbox: fit inside and pad with 0;
    # center_crop: scale to cover, then crop the centre.
    resize: str = "stretch"

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    classes: tuple[str, ...]
    input: InputSpec
    model_file: str = "model.onnx"
    input_name: str = "input"
    logits_output: str = "logits"
    embedding_output: str = "embedding"
    novelty_bank_file: str = "novelty_bank.npy"
    task: str = "classification"
    parent_version: int = 0
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    label_set: dict = field(default_factory=dict)  # {"count": n, "sha256": ...}
    metrics: dict = field(default_factory=dict)
    created_at: str = ""
    embedding_dim: int = 0  # length of the embedding output (0 = unknown, older bundles)
    # Novelty = cosine distance to the k-th nearest bank embedding, calibrated against the bank's
    # own leave-one-out k-NN distances at these quantiles (0%, 1%, ..., 100%): the device reports
    # the quantile rank, so 0.5 means "as far from the bank as a typical bank member" whatever
    # the model. Empty = report the raw distance.
    novelty_k: int = 1
    novelty_quantiles: tuple[float, ...] = ()
    # How the model was made: {"mode": "head" | "full" | "external" | "seed", "arch": ..., "config": {...},
    # "backbone_sha256": ...}. Informational on the device; the cloud's registry keeps the lineage.
    trainer: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = FORMAT
        d["classes"] = list(self.classes)
        d["input"]["mean"] = list(self.input.mean)
        d["input"]["std"] = list(self.input.std)
        d["novelty_quantiles"] = list(self.novelty_quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"manifest format must be {FORMAT!r}, got {d.get('format') if isinstance(d, dict) else d!r}")
        try:
            spec = InputSpec(
                width=int(d["input"]["width"]),
                height=int(d["input"]["height"]),
                color=str(d["input"].get("color", "rgb")),
                mean=tuple(float(v) for v in d["input"].get("mean", (0.0,))),
                std=tuple(float(v) for v in d["input"].get("std", (1.0,))),
                layout=str(d["input"].get("layout", "NCHW")),
                resize=str(d["input"].get("resize", "stretch")),
            )
            fields = {k: v for k, v in d.items() if k not in ("format", "input", "classes")}
            known = set(cls.__dataclass_fields__)
            unknown = set(fields) - known
            if unknown:
                raise BundleError(f"manifest has unknown keys: {sorted(unknown)}")
            if not isinstance(d["classes"], list) or not isinstance(d.get("files", {}), dict):
                raise BundleError("manifest classes must be a list and files a mapping")
            if type(d.get("version")) is not int or type(d.get("parent_version", 0)) is not int:
                raise BundleError("manifest version and parent_version must be integers")
            if "novelty_quantiles" in fields:
                fields["novelty_quantiles"] = tuple(float(v) for v in fields["novelty_quantiles"])
            manifest = cls(classes=tuple(str(c) for c in d["classes"]), input=spec, **fields)
            manifest.validate()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"malformed manifest: {exc!r}") from exc
        return manifest

    def validate(self) -> None:
        if self.version < 1:
            raise BundleError(f"manifest version must be >= 1, got {self.version}")
        if not self.classes:
            raise BundleError("manifest lists no classes")
        if self.input.color not in COLOR_ORDERS:
            raise BundleError(f"input.color must be one of {COLOR_ORDERS}, got {self.input.color!r}")
        if self.input.layout not in LAYOUTS:
            raise BundleError(f"input.layout must be one of {LAYOUTS}, got {self.input.layout!r}")
        if self.input.resize not in RESIZE_MODES:
            raise BundleError(f"input.resize must be one of {RESIZE_MODES}, got {self.input.resize!r}")
        if self.novelty_k < 1 or self.embedding_dim < 0:
            raise BundleError("novelty_k must be >= 1 and embedding_dim >= 0")
        q = self.novelty_quantiles
        if q and (len(q) < 2 or any(b < a for a, b in zip(q, q[1:]))):
            raise BundleError("novelty_quantiles must be at least 2 non-decreasing values")
        if not (1 <= self.input.width <= 4096 and 1 <= self.input.height <= 4096):
            raise BundleError(f"input size {self.input.width}x{self.input.height} out of range")
        for spec_values, name in ((self.input.mean, "mean"), (self.input.std, "std")):
            if len(spec_values) not in (1, self.input.channels):
                raise BundleError(f"input.{name} needs 1 or {self.input.channels} values")
        if any(s == 0 for s in self.input.std):
            raise BundleError("input.std must not contain 0")
        for path in (self.model_file, self.novelty_bank_file, *self.files):
            check_relative_path(path)
        for required in (self.model_file, self.novelty_bank_file):
            if required not in self.files:
                raise BundleError(f"manifest.files has no sha256 for {required}")


def check_relative_path(path: str) -> None:
    """Reject paths that could escape the bundle directory."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or path in RESERVED_FILES:
        raise BundleError(f"unsafe or reserved bundle path: {path!r}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest_bytes(bundle_dir: Path) -> bytes:
    """manifest.json's exact bytes: what a signature covers, read once so that the bytes
    checked are the bytes parsed."""
    path = Path(bundle_dir) / MANIFEST_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"no {MANIFEST_FILE} in {bundle_dir}") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def parse_manifest(data: bytes, source: object = MANIFEST_FILE) -> Manifest:
    """A manifest from manifest.json's bytes; `source` names them in errors."""
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {source}: {exc}") from exc
    return Manifest.from_dict(parsed)


def load_manifest(bundle_dir: Path) -> Manifest:
    return parse_manifest(read_manifest_bytes(bundle_dir), Path(bundle_dir) / MANIFEST_FILE)


def check_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists is in `bundle_dir` with its sha256."""
    bundle_dir = Path(bundle_dir)
    for rel, expected in manifest.files.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {rel}")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"sha256 mismatch for {rel}: manifest {expected[:12]}…, file {actual[:12]}…")


def verify_bundle(bundle_dir: Path) -> Manifest:
    """Load the manifest and check every listed file's sha256. Raises BundleError. The
    signature is not checked here: see `edge_agent.signing.BundleVerifier`."""
    manifest = load_manifest(bundle_dir)
    check_files(bundle_dir, manifest)
    return manifest


def write_bundle(bundle_dir: Path, manifest: Manifest, files: dict[str, Path]) -> Manifest:
    """Copy `files` (bundle path -> source path) into `bundle_dir` and write a manifest that
    lists their sha256. Returns the manifest as written. The directory must not exist yet."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=False)
    hashes = {}
    for rel, src in files.items():
        check_relative_path(rel)
        dst = bundle_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(src).read_bytes())
        hashes[rel] = sha256_file(dst)
    final = Manifest(**{**manifest.__dict__, "files": hashes})
    final.validate()
    tmp = bundle_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(final.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, bundle_dir / MANIFEST_FILE)
    return final
