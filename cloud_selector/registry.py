"""Model versions: publish a verified bundle, find the latest, materialise one locally.

Bundle files are stored in the blob store under `models/v<N>/<path>`; the catalog's `models`
table holds the manifest and the file list (path, sha256, size) that assignments announce.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from edge_agent.bundle import MANIFEST_FILE, BundleError, Manifest, verify_bundle
from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog


def bundle_key(version: int, path: str) -> str:
    return f"models/v{version}/{path}"


class Registry:
    def __init__(self, catalog: Catalog, blobs: BlobStore, cache_dir: Path):
        self.catalog = catalog
        self.blobs = blobs
        self.cache_dir = Path(cache_dir)

    def publish(self, bundle_dir: Path) -> Manifest:
        """Verify a bundle, store its files, and record it as the newest published version."""
        manifest = verify_bundle(bundle_dir)
        latest = self.catalog.latest_model()
        if latest is not None and manifest.version <= latest["version"]:
            raise BundleError(f"version {manifest.version} is not newer than the published v{latest['version']}")
        files = []
        for rel in [*manifest.files, MANIFEST_FILE]:
            data = (Path(bundle_dir) / rel).read_bytes()
            self.blobs.put(bundle_key(manifest.version, rel), data)
            files.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        self.catalog.add_model(version=manifest.version, name=manifest.name, parent_version=manifest.parent_version,
                               manifest=manifest.to_dict(), files=files)
        return manifest

    def latest(self) -> dict | None:
        return self.catalog.latest_model()

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
                return target
            except BundleError:
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

