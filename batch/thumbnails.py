"""Small pictures of a report's examples, read from their input URIs, as data: URIs for the page.

Bounded like every input twinfer reads: at most ``MAX_THUMBNAILS`` per report; each file is read
up to the decoder's byte cap and decoded by ``shared.ImageLoader`` with the default decode limits
(pixels, formats, decode work; JPEGs at a reduced DCT scale), then shrunk to ``THUMBNAIL_SIDE``
pixels on its longer side and re-encoded as a JPEG. An input that cannot be read or decoded
(moved, deleted, refused by the limits) gets its error in place of a picture; the report is
written all the same.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image

from batch.uris import S3Options, resolve
from shared import ImageLoader, ModelConfig

MAX_THUMBNAILS = 48
THUMBNAIL_SIDE = 160
JPEG_QUALITY = 80


@lru_cache(maxsize=1)
def _loader() -> ImageLoader:
    return ImageLoader(ModelConfig())


def thumbnail(uri: str, s3: S3Options | None = None) -> dict:
    """``{"src": data URI, "width", "height", "original": [width, height]}`` or ``{"error": why}``."""
    loader = _loader()
    cap = loader.config.decode.max_bytes
    try:
        where = resolve(uri, s3)
        with where.filesystem.open_input_stream(where.path) as stream:
            data = stream.read(cap + 1)  # one byte over the cap is enough to refuse it
        pixels = loader.decode(data)
    except Exception as exc:  # a thumbnail is never worth failing the report for
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    image = Image.fromarray(np.ascontiguousarray(pixels))
    # a JPEG decodes at a reduced scale: the header (already checked) gives the full size, which
    # detection boxes are in (the longer side: EXIF orientation may have swapped width and height)
    scale = max(Image.open(io.BytesIO(data)).size) / max(image.size)
    original = [round(image.width * scale), round(image.height * scale)]
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    src = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"src": src, "width": image.width, "height": image.height, "original": original}


def thumbnails(uris: list[str], s3: S3Options | None = None) -> dict[str, dict]:
    """``uri -> thumbnail(uri)`` for the first ``MAX_THUMBNAILS`` distinct URIs."""
    wanted = list(dict.fromkeys(uris))[:MAX_THUMBNAILS]
    return {uri: thumbnail(uri, s3) for uri in wanted}
