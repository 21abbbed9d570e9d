"""The two routes that send file contents: static assets and candidate images.

Neither ever opens a path taken from the request. Static names must match a strict pattern and
resolve to a file inside the static directory; images are found by candidate id (a UUID), whose
catalog row names the blob. Everything else is 404 (a size out of range is 400).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import cv2
import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from cloud_selector.dashboard.web import STATIC_DIR, BadRequest, NotFound, int_param, page, services

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                ".png": "image/png", ".ico": "image/x-icon"}
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
THUMBNAIL_SIZES = (32, 512)
JPEG_QUALITY = 85


def resolve_inside(root: Path, name: str) -> Path | None:
    """root/name if `name` is a plain relative name of a file inside `root`, else None."""
    if not _STATIC_NAME.fullmatch(name) or ".." in name.split("/"):
        return None
    root = root.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def static_file(request: Request) -> Response:
    path = resolve_inside(STATIC_DIR, request.path_params["path"])
    if path is None or path.suffix not in STATIC_TYPES:
        raise NotFound("no such static file")
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"cache-control": "private, max-age=300"})


def candidate_uuid(text: str) -> str | None:
    """The canonical form of a candidate id, or None when `text` is not a UUID."""
    try:
        value = uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return None
    return str(value) if str(value) == text.lower() else None


def image(request: Request) -> Response:
    """/images/{candidate_id}: the stored JPEG, or ?size=N (32..512) a thumbnail whose longer side is N."""
    from cloud_selector.blobstore import BlobError

    candidate_id = candidate_uuid(request.path_params["candidate_id"])
    if candidate_id is None:
        raise NotFound("no such image (an image is named by its candidate's id)")
    size = request.query_params.get("size")
    size = int_param(size, "size", lo=THUMBNAIL_SIZES[0], hi=THUMBNAIL_SIZES[1]) if size is not None else None
    catalog = services(request).catalog
    rows = catalog.candidates(ids=[candidate_id])
    if not rows:
        raise NotFound(f"no candidate {candidate_id}")
    try:
        data = services(request).blobs.get(rows[0].blob_key)
    except (BlobError, OSError) as exc:
        raise NotFound(f"the image of candidate {candidate_id} is missing from the blob store ({exc})") from exc
    if size is not None:
        data = thumbnail(data, size)
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


def thumbnail(jpeg: bytes, size: int) -> bytes:
    """The image scaled so that its longer side is `size` (never enlarged by more than it needs)."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadRequest("the stored image cannot be decoded")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)
    ok, out = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise BadRequest("the thumbnail could not be encoded")
    return out.tobytes()


def routes() -> list:
    return [page("/static/{path:path}", static_file), page("/images/{candidate_id}", image)]
