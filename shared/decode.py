"""Stage 1 of the wrapper: image bytes -> uint8 RGB HWC array, or a typed error.

Every check happens here, per image, before the image can join a batch:
empty input, unrecognised bytes, format allow-list, pixel cap (read from the header, before the
pixels are decoded), truncated/corrupt data (``load()`` inside the try), EXIF orientation, and
every Pillow mode folded to 3-channel RGB.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.errors import EmptyInput, ImageTooLarge, InvalidImage, UnsupportedFormat

DEFAULT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})  # MPO: multi-picture phone JPEGs
JPEG_FORMATS = ("JPEG", "MPO")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # also the HTTP body cap's default (ingress.max_body_bytes)

# A truncated file must fail, not decode into grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Read and check the header only (no pixels decoded): empty input, unrecognised bytes, format
    allow-list, pixel cap, zero size. Returns the lazily opened Pillow image."""
    if not data:
        raise EmptyInput("empty input: no image bytes")
    parsers = _parsers(frozenset(formats))
    try:
        # Only the allow-listed formats' plug-ins parse the bytes: every other plug-in's header
        # parser is attack surface we do not need. Pillow only warns between its own pixel limit
        # and twice it; our max_pixels check below decides.
        image = Image.open(io.BytesIO(data), formats=parsers)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise _unidentified(data, parsers, formats) from None
    except Exception as exc:  # Pillow raises a zoo of types on hostile headers
        raise InvalidImage(f"cannot read image header: {exc}") from None

    if image.format not in formats:
        raise UnsupportedFormat(
            f"image format {image.format!r} is not accepted (accepted: {', '.join(sorted(formats))})"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the cap is {max_pixels}")
    if width == 0 or height == 0:
        raise InvalidImage("image has no pixels")
    return image


@lru_cache(maxsize=32)
def _parsers(formats: frozenset[str]) -> tuple[str, ...]:
    """The Pillow plug-ins that may open an allow-listed format, in Pillow's own order. MPO has
    no plug-in of its own: the JPEG one opens it (and says ``MPO``), so either name needs it."""
    Image.init()
    wanted = {"JPEG" if name == "MPO" else name for name in formats}
    return tuple(name for name in Image.ID if name in wanted)


def _unidentified(data: bytes, parsers: tuple[str, ...], formats: frozenset[str]) -> Exception:
    """The error for bytes no allow-listed plug-in could open. A file in some other format is
    recognised by its leading magic bytes alone (each plug-in's ``accept`` prefix test, as Pillow
    uses it to pick a parser), so no parser of a refused format ever runs. Formats Pillow can only
    identify by parsing (no ``accept``: TGA, SPIDER, IM, ...) are indistinguishable from junk."""
    prefix = data[:16]  # what Pillow hands the accept functions
    if any(_accepts(Image.OPEN[name][1], prefix) for name in parsers):
        return InvalidImage("cannot read image header")  # an accepted format's magic, a broken header
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if name not in parsers and accept is not None and _accepts(accept, prefix):
            return UnsupportedFormat(
                f"image format {name!r} is not accepted (accepted: {', '.join(sorted(formats))})"
            )
    return InvalidImage("not a recognised image")


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))  # a string is Pillow's "this format, but no codec here"
    except Exception:
        return False


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode ``data`` to a C-contiguous ``uint8`` array of shape (H, W, 3).

    ``draft_size``: for JPEGs, let libjpeg decode at a reduced DCT scale whose result is still at
    least ``draft_size`` pixels on each side (much cheaper than a full decode then a resize).
    """
    return decode_opened(open_image(data, max_pixels=max_pixels, formats=formats), draft_size=draft_size)


def decode_opened(image: Image.Image, *, draft_size: int | None = None) -> np.ndarray:
    """The pixels of an image ``open_image`` checked: corrupt or truncated data fails here."""
    try:
        if draft_size and image.format in JPEG_FORMATS:
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # first frame only for animated images
        image = ImageOps.exif_transpose(image)
        return _to_rgb_array(image)
    except Exception as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range -> 8-bit
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as a viewer would show them on a page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # a writable, contiguous copy
