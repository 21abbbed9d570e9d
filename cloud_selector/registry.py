"""Model versions: publish a verified bundle, find the latest, materialise one locally.

Bundle files are stored in the blob store under `models/v<N>/<path>`; the catalog's `models`
table holds the manifest and the file list (path, sha256, size) that assignments announce.

With a signing key, publishing signs manifest.json (edge_agent.signing) and the signature,
manifest.sig, is one of the listed files, so devices fetch it with the rest. The signature is
made from the bytes being published, in memory: the source directory is never written to (a
`models publish` of someone's bundle leaves it as it was), and a signature that came with it
is replaced by this cloud's. Without a key a bundle is published as it came, its manifest.sig
(if any) included, and a WARNING says it is unsigned.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from edge_agent.bundle import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleError,
    Manifest,
    check_files,
    parse_manifest,
    read_manifest_bytes,
    sha256_file,
    verify_bundle,
)
from edge_agent.signing import SigningKey, sign_manifest, verify_manifest
from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog
from cloud_selector.releases import Releases

log = logging.getLogger(__name__)


def bundle_key(version: int, path: str) -> str:
    return f"models/v{version}/{path}"


class Registry:
    def __init__(self, catalog: Catalog, blobs: BlobStore, cache_dir: Path, signing_key: SigningKey | None = None,
                 create_signing_key: Callable[[], SigningKey] | None = None):
        """`create_signing_key`, when given, makes the key at the first publish without one
        (the embedded default: cloud_selector/keys.py)."""
        self.catalog = catalog
        self.blobs = blobs
        self.cache_dir = Path(cache_dir)
        self.signing_key = signing_key
        self._create_signing_key = create_signing_key

    def signer(self) -> SigningKey | None:
        """The signing key, made now if this registry may make one (None: signing is off)."""
        if self.signing_key is None and self._create_signing_key is not None:
            self.signing_key = self._create_signing_key()
        return self.signing_key

    def publish(self, bundle_dir: Path, *, release: bool = True, actor: str = "") -> Manifest:
        """Verify a bundle, sign it (with a key), store its files, and record it as the newest
        version. `release=True` also makes it the default channel's version at once, with no
        evaluation gate (tools and tests that did their own checks); the gated path,
        cloud_selector/promotion.py, publishes with release=False and releases what passes."""
        bundle_dir = Path(bundle_dir)
        manifest_bytes = read_manifest_bytes(bundle_dir)  # one read: the bytes signed are the bytes stored
        manifest = parse_manifest(manifest_bytes, bundle_dir / MANIFEST_FILE)
        check_files(bundle_dir, manifest)
        latest = self.catalog.latest_model()
        if latest is not None and manifest.version <= latest["version"]:
            raise BundleError(f"version {manifest.version} is not newer than the published v{latest['version']}")
        contents = {rel: (bundle_dir / rel).read_bytes() for rel in manifest.files}
        contents[MANIFEST_FILE] = manifest_bytes
        if self.signer() is not None:
            signature = sign_manifest(manifest_bytes, self.signing_key)
            verify_manifest(manifest_bytes, signature, {self.signing_key.key_id: self.signing_key.public})
            contents[SIGNATURE_FILE] = signature.to_bytes()
        elif (bundle_dir / SIGNATURE_FILE).is_file():
            contents[SIGNATURE_FILE] = (bundle_dir / SIGNATURE_FILE).read_bytes()
        files = []
        for rel, data in contents.items():
            self.blobs.put(bundle_key(manifest.version, rel), data)
            files.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        self.catalog.add_model(version=manifest.version, name=manifest.name, parent_version=manifest.parent_version,
                               manifest=manifest.to_dict(), files=files)
        releases = Releases(self.catalog, self.signer)
        releases.record_lineage(manifest.version, trainer_mode=manifest.trainer.get("mode", "imported"), labels=())
        if release:
            releases.release(manifest.version, action="publish", actor=actor)
        if self.signing_key is not None:
            log.info("published %s v%d signed by key %s", manifest.name, manifest.version, self.signing_key.key_id)
        else:
            log.warning("published %s v%d without a signature of this cloud (no signing key: `cloud-selector keys "
                        "init`); devices with model.trusted_keys will refuse it", manifest.name, manifest.version)
        return manifest

    def latest(self) -> dict | None:
        """The newest version recorded, released or not."""
        return self.catalog.latest_model()

    def released(self, channel: str = "") -> dict | None:
        """The model the channel runs (the default channel unless named); before anything was
        ever released, the newest version recorded."""
        version = Releases(self.catalog).channel_version(channel)
        return self.catalog.model(version) if version else self.latest()

    def next_version(self) -> int:
        versions = [m["version"] for m in self.catalog.list_models()]
        return max(versions, default=0) + 1

    def local_bundle(self, version: int) -> Path:
        """A verified local copy of a published bundle (cached under cache_dir/v<N>)."""
        record = self.catalog.model(version)
        if record is None:
            raise BundleError(f"no model version {version}")
        target = self.cache_dir / f"v{version}"
        if target.is_dir():
            try:
                verify_bundle(target)
                if all(sha256_file(target / f["path"]) == f["sha256"] for f in record["files"]):
                    return target  # the signature and manifest too, not only what the manifest lists
            except (BundleError, OSError):
                pass
            shutil.rmtree(target)
        staging = self.cache_dir / f".v{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for f in record["files"]:
            dest = staging / f["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.blobs.get(bundle_key(version, f["path"])))
        verify_bundle(staging)
        staging.rename(target)
        return target
