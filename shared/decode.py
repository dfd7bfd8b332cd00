"""Stage 1 of the wrapper: image bytes -> uint8 RGB HWC array, or a typed error.

Every check happens here, per image, before the image can join a batch:
empty input, byte cap, unrecognised bytes, format allow-list (only allow-listed formats' Pillow
plug-ins ever parse the bytes), pixel cap (read from the header, before the pixels are decoded),
decode work (below), truncated/corrupt data (``load()`` inside the try), EXIF orientation, and
every Pillow mode folded to 3-channel RGB. The conversion runs a block of rows at a time straight
into the one uint8 result, with integer arithmetic (16-bit scaling, compositing on white): beyond
Pillow's decoded image it holds the result and a block's temporaries, never a full-size float,
RGBA or transposed copy.

Decode work is bounded before any pixel is decoded, from the bytes and the header alone:

- JPEG/MPO: libjpeg walks every block of the image once per scan, and a progressive file may
  repeat scans without limit (a scan of a few bytes of EOB runs still costs a pass over every
  block). Every SOS marker in the file is counted (a regex scan, C speed: an upper bound on
  the scans libjpeg will see, thumbnails and an MPO's later pictures included) and both the
  count (``max_jpeg_scans``) and pixels x scans (``max_jpeg_scan_pixels``) are capped. The same
  budget covers JPEG-compressed TIFFs (scans x strip or tile pixels).
- Structures Pillow walks in Python, one interpreter step each while holding the GIL: JPEG
  marker segments before the first scan, PNG chunks, GIF blocks before the first picture, TIFF
  tags and uncompressed strips. Unchecked, a 20 MiB file of empty chunks or segments costs
  seconds of CPU; at most ``MAX_HEADER_STEPS`` each (a capped walk, before ``Image.open``).
- PNG chunks Pillow inflates (iCCP, zTXt, iTXt: up to 1 MiB each): at most
  ``MAX_PNG_INFLATED_CHUNKS``; a flood of iCCP chunks otherwise costs about a minute.
- RLE-compressed BMPs, which Pillow decodes in Python, per pixel and per 2 bytes:
  at most ``MAX_BMP_RLE_PIXELS`` and ``MAX_BMP_RLE_BYTES``.

Everything else the allow-list admits decodes in C in time linear in pixels plus bytes (PNG,
GIF and WebP data, uncompressed BMP, libtiff's codecs), both already capped. What the caps cost
and save, measured: ``python -m bench.decode_limits`` (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import io
import re
import struct
from functools import lru_cache

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from shared.errors import EmptyInput, ImageTooComplex, ImageTooLarge, InvalidImage, UnsupportedFormat

DEFAULT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})  # MPO: multi-picture phone JPEGs
JPEG_FORMATS = ("JPEG", "MPO")
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # also the HTTP body cap's default (ingress.max_body_bytes)
# libjpeg's standard progressive scripts (Pillow's progressive=True; optimize=True changes only
# the Huffman tables) have 6 scans for grey, 10 for YCbCr, 18 for CMYK; encoders that optimise
# their scripts (mozjpeg) stay in the tens. For comparison nvImageCodec's default cap is 256 and
# libtiff's 100 scans per strip.
DEFAULT_MAX_JPEG_SCANS = 100
# max_jpeg_scan_pixels defaults to this x max_pixels: a CMYK progressive file (18 scans) or an
# MPO of two colour progressive pictures plus thumbnails (~22) at the pixel cap still fits. The
# worst file that fits costs ~1-2.5 s of libjpeg-turbo CPU (by the kind of scan repeated); a
# real 40 Mpx progressive photo costs ~0.9 s.
JPEG_SCANS_AT_MAX_PIXELS = 24

MAX_HEADER_STEPS = 16_384  # real files: tens of segments or tags, a few thousand chunks or blocks
MAX_PNG_INFLATED_CHUNKS = 64  # Pillow's own text cap is 64 MiB inflated; iCCP has none
MAX_BMP_RLE_PIXELS = 1 << 21  # 1920 x 1080 fits
MAX_BMP_RLE_BYTES = 1 << 19

JPEG_SOS = re.compile(b"\xff\xda")  # a scan's marker, which entropy-coded data cannot contain
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_INFLATED = frozenset({b"iCCP", b"zTXt", b"iTXt"})
BLOCK_PIXELS = 1 << 16  # converted at a time: under 2 MB of temporaries, whatever the image
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}

# A truncated file must fail, not decode into grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    max_jpeg_scan_pixels: int | None = None,
) -> Image.Image:
    """Read and check the header only (no pixels decoded): empty input, byte cap, unrecognised
    bytes, format allow-list, pixel cap, zero size, decode work (module docstring). Returns the
    lazily opened Pillow image. ``max_jpeg_scan_pixels`` None: ``JPEG_SCANS_AT_MAX_PIXELS`` x
    ``max_pixels``."""
    if not data:
        raise EmptyInput("empty input: no image bytes")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the cap is {max_bytes}")
    parsers = _parsers(frozenset(formats))
    _check_header_steps(data, parsers)
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
    if max_jpeg_scan_pixels is None:
        max_jpeg_scan_pixels = JPEG_SCANS_AT_MAX_PIXELS * max_pixels
    _check_decode_work(image, data, max_jpeg_scans, max_jpeg_scan_pixels)
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
            return UnsupportedFormat(f"image format {name!r} is not accepted (accepted: {', '.join(sorted(formats))})")
    return InvalidImage("not a recognised image")


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))  # a string is Pillow's "this format, but no codec here"
    except Exception:
        return False


def decode_image(data: bytes, *, draft_size: int | None = None, **limits) -> np.ndarray:
    """Decode ``data`` to a C-contiguous ``uint8`` array of shape (H, W, 3). ``limits``: the
    keyword arguments of ``open_image`` (``max_pixels``, ``formats``, ``max_bytes``...).

    ``draft_size``: for JPEGs, let libjpeg decode at a reduced DCT scale whose result is still at
    least ``draft_size`` pixels on each side (much cheaper than a full decode then a resize).
    """
    return decode_opened(open_image(data, **limits), draft_size=draft_size)


def _check_header_steps(data: bytes, parsers: tuple[str, ...]) -> None:
    """Refuse, before Pillow reads it, a header Pillow would walk in more than ``MAX_HEADER_STEPS``
    Python steps. The plug-in is picked as ``Image.open`` picks it (the first whose ``accept``
    takes the prefix); each walk mirrors its loop, step for step, and stops at the cap."""
    name = next((name for name in parsers if _accepts(Image.OPEN[name][1], data[:16])), None)
    walk = HEADER_WALKS.get(name)
    if walk is not None and walk(data, MAX_HEADER_STEPS) > MAX_HEADER_STEPS:
        raise ImageTooComplex(f"image header has more than {MAX_HEADER_STEPS} {walk.__doc__}; refused before decoding")


def _jpeg_header_steps(data: bytes, limit: int) -> int:
    """marker segments or padding bytes before the first scan"""
    from PIL.JpegImagePlugin import MARKER

    # JpegImageFile._open: one step per junk byte, fill byte, bare marker or segment, up to SOS
    pos, steps, end = 2, 0, len(data)
    while pos + 1 < end and steps <= limit:
        steps += 1
        if data[pos] != 0xFF:
            pos += 1  # junk, skipped a byte at a time
            continue
        marker = 0xFF00 | data[pos + 1]
        if marker in MARKER:
            if marker == 0xFFDA:
                break
            if MARKER[marker][2] is None:  # no payload (RSTn, SOI, EOI, JPGn)
                pos += 2
            else:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                pos += 4 + max(length - 2, 0)
        elif marker in (0xFF00, 0xFFFF):
            pos += 1 if marker == 0xFFFF else 2  # fill byte / escaped 0xFF
        else:
            break  # Pillow: "no marker found"
    return steps


def _png_steps(data: bytes, limit: int) -> int:
    """chunks (or more than MAX_PNG_INFLATED_CHUNKS compressed metadata chunks)"""
    # PngImageFile: every chunk up to IEND, one after another (_open, load_read, load_end)
    pos, steps, inflated, end = len(PNG_MAGIC), 0, 0, len(data)
    while pos + 8 <= end and steps <= limit:
        length, kind = struct.unpack_from(">I4s", data, pos)
        steps += 1
        if kind in PNG_INFLATED:
            inflated += 1
            if inflated > MAX_PNG_INFLATED_CHUNKS:
                return limit + 1
        if kind == b"IEND":
            break
        pos += 12 + length
    return steps


def _gif_steps(data: bytes, limit: int) -> int:
    """blocks or stray bytes before the first picture"""
    # GifImageFile._seek(0), step for step: extension sub-blocks, and any other byte one at a
    # time, up to the first image descriptor; the picture's own data is read by the C decoder
    end = len(data)

    def sub_block(pos: int) -> tuple[int, int]:  # GifImageFile.data(): (size, next position)
        size = data[pos] if pos < end else 0
        return size, pos + 1 + size if pos < end else pos

    flags = data[10] if end > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    steps = 0
    while pos < end and steps <= limit:
        steps += 1
        byte = data[pos]
        if byte in b",;" or pos + 1 >= end:
            break
        if byte != 0x21:  # not "!": skipped a byte at a time
            pos += 1
            continue
        label = data[pos + 1]
        size, pos = sub_block(pos + 2)
        block = data[pos - size : pos]
        if label == 0xFE:  # comment: sub-blocks up to the empty one
            while size and steps <= limit:
                size, pos = sub_block(pos)
                steps += 1
            continue
        if label == 0xFF and size and block.startswith(b"NETSCAPE2.0"):
            size, pos = sub_block(pos)
        # then sub-blocks up to an empty one, even when the first was already the empty one
        while steps <= limit:
            size, pos = sub_block(pos)
            steps += 1
            if not size:
                break
    return steps


def _tiff_steps(data: bytes, limit: int) -> int:
    """tags, or uncompressed strips or tiles, in the first directory"""
    # TiffImageFile: one step per tag of the first IFD; uncompressed data, one tile per strip
    # (or tile) offset; libtiff reads compressed strips in C
    endian = "<" if data[:2] == b"II" else ">"
    big = len(data) > 2 and data[2] == 43  # BigTIFF, as Pillow decides it
    try:
        if big:
            (ifd,) = struct.unpack_from(endian + "Q", data, 8)
            (count,) = struct.unpack_from(endian + "Q", data, ifd)
            entry, first, layout = 20, ifd + 8, "HHQ"
        else:
            (ifd,) = struct.unpack_from(endian + "L", data, 4)
            (count,) = struct.unpack_from(endian + "H", data, ifd)
            entry, first, layout = 12, ifd + 2, "HHL"
    except struct.error:
        return 0  # no directory to walk: Pillow fails on it
    count = min(count, (len(data) - first) // entry)
    if count > limit:
        return count
    # Pillow keeps a tag's first entry of a type it reads whose values fit in the file
    tags: dict[int, tuple[int, int, int]] = {}
    for i in range(count):
        at = first + i * entry
        tag, kind, n = struct.unpack_from(endian + layout, data, at)
        if tag not in tags and kind in TIFF_TYPE_SIZES and n * TIFF_TYPE_SIZES[kind] <= len(data):
            tags[tag] = (kind, n, at + entry - (8 if big else 4))  # the value field, left-justified
    compression = 1
    if 259 in tags and tags[259][0] in (3, 4) and tags[259][1] == 1:
        kind, _, at = tags[259]
        (compression,) = struct.unpack_from(endian + ("H" if kind == 3 else "L"), data, at)
    if compression != 1:
        return count
    return count + max(tags.get(273, (0, 0))[1], tags.get(324, (0, 0))[1])


HEADER_WALKS = {"JPEG": _jpeg_header_steps, "PNG": _png_steps, "GIF": _gif_steps, "TIFF": _tiff_steps}


def _check_decode_work(image: Image.Image, data: bytes, max_scans: int, max_scan_pixels: int) -> None:
    """Refuse a file whose pixels would cost more to decode than the caps allow (module docstring)."""
    width, height = image.size
    if image.format in JPEG_FORMATS:
        _check_scans(data, width * height, max_scans, max_scan_pixels, "JPEG")
    elif image.format == "TIFF" and image.info.get("compression") in ("jpeg", "tiff_jpeg"):
        tags = image.tag_v2
        if image.info["compression"] == "tiff_jpeg":  # old-style: one JPEG stream may span the image
            unit = width * height
        elif 322 in tags and 323 in tags:
            unit = _int(tags[322]) * _int(tags[323])
        else:
            unit = width * min(_int(tags.get(278, height)) or height, height)
        # libtiff caps scans per strip or tile itself (100); the total is what costs
        _check_scans(data, unit or width * height, None, max_scan_pixels, "JPEG-compressed TIFF")
    elif image.format == "BMP" and image.tile and image.tile[0][0] == "bmp_rle":
        if width * height > MAX_BMP_RLE_PIXELS or len(data) > MAX_BMP_RLE_BYTES:
            raise ImageTooComplex(
                f"RLE-compressed BMP of {width * height} pixels and {len(data)} bytes; the caps are "
                f"{MAX_BMP_RLE_PIXELS} pixels and {MAX_BMP_RLE_BYTES} bytes (it decodes in Python)"
            )


def _check_scans(data: bytes, pixels: int, max_scans: int | None, max_scan_pixels: int, what: str) -> None:
    """Every SOS marker in the file counts: libjpeg cannot see a scan whose marker is not there.
    Counting stops at the first marker over a cap, so a body of nothing but markers is as quick."""
    limit = max_scan_pixels // max(pixels, 1)
    if max_scans is not None:
        limit = min(limit, max_scans)
    scans = 0
    for scans, _ in enumerate(JPEG_SOS.finditer(data), 1):  # the regex engine's scan, at C speed
        if scans > limit:
            break
    if max_scans is not None and scans > max_scans:
        raise ImageTooComplex(
            f"{what} has more than {max_scans} scans, the cap (decoding walks every block once per scan)"
        )
    if scans * pixels > max_scan_pixels:
        raise ImageTooComplex(
            f"{what} decoding would walk at least {scans} scans x {pixels} pixels; the cap is {max_scan_pixels}"
        )


def _int(value) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def decode_opened(image: Image.Image, *, draft_size: int | None = None) -> np.ndarray:
    """The pixels of an image ``open_image`` checked: corrupt or truncated data fails here."""
    try:
        if draft_size and image.format in JPEG_FORMATS:
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # first frame only for animated images
        return _to_rgb_array(image, _orientation(image))
    except Exception as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None


# As ImageOps.exif_transpose: EXIF orientation -> the transpose that makes the picture upright
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) as ``ImageOps.exif_transpose`` reads it; other values are 1."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in TRANSPOSES else 1


def _to_rgb_array(image: Image.Image, orientation: int = 1) -> np.ndarray:
    """Every mode to one C-contiguous uint8 (H, W, 3) array, upright. A block of rows at a time
    is transposed (Pillow, in its own mode), converted, and written to its place in that array,
    so beyond Pillow's decoded image and the result only a block's temporaries are ever held:
    no full-size float, RGBA or transposed copy."""
    width, height = image.size
    method = TRANSPOSES.get(orientation)
    across = orientation >= 5  # a block of rows lands as a band of columns
    from_bottom = orientation in (3, 4, 6, 7)  # the first rows land last
    out = np.empty((width, height, 3) if across else (height, width, 3), np.uint8)
    convert = _block_converter(image)
    rows = max(1, BLOCK_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        block = image.crop((0, top, width, bottom))
        pixels = convert(block.transpose(method) if method is not None else block)
        start, stop = (height - bottom, height - top) if from_bottom else (top, bottom)
        if across:
            out[:, start:stop] = pixels
        else:
            out[start:stop] = pixels
    return out


def _block_converter(image: Image.Image):
    """A function: a row block (a Pillow image in ``image``'s mode) -> uint8 (rows, width, 3),
    or (rows, width, 1) for grey, which broadcasts to the three channels."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _sixteen_bit
    if mode in ("I", "F"):
        top = max(image.getextrema()[1], 0)  # as a whole-image max decides the scale
        return (lambda block: _int_grey(block, top)) if mode == "I" else (lambda block: _float_grey(block, top))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _on_white
    if mode == "L":
        return lambda block: np.asarray(block)[:, :, None]
    if mode == "RGB":
        return _rgb
    return lambda block: _rgb(block.convert("RGB"))


def _rgb(block: Image.Image) -> np.ndarray:
    return np.frombuffer(block.tobytes(), np.uint8).reshape(block.height, block.width, 3)


def _on_white(block: Image.Image) -> np.ndarray:
    """Transparent pixels become white, as a viewer would show them on a page: exactly Pillow's
    ``alpha_composite`` over opaque white, round(c * a / 255 + 255 - a), in uint16."""
    rgba = np.asarray(block if block.mode == "RGBA" else block.convert("RGBA"))
    alpha = rgba[:, :, 3:].astype(np.uint16)
    mixed = rgba[:, :, :3] * alpha  # at most 255 * 255 with the next line: fits in uint16
    mixed += (255 - alpha) * 255
    mixed += 128
    mixed += mixed >> 8  # (v + 128 + ((v + 128) >> 8)) >> 8 == round(v / 255) for v <= 65025
    mixed >>= 8
    return mixed.astype(np.uint8)


def _sixteen_bit(block: Image.Image) -> np.ndarray:
    """16-bit grey -> 8-bit: round(v / 257) as integers (v / 257 is never a tie)."""
    values = np.asarray(block).astype(np.uint32)
    values += 128
    values //= 257
    return values.astype(np.uint8)[:, :, None]


def _int_grey(block: Image.Image, top: int) -> np.ndarray:
    """32-bit grey: the 16-bit scale when any value is over 255, else as is; clipped to 0-255
    (clipping to 0-65535 before scaling changes nothing: both ends clip anyway)."""
    values = np.clip(np.asarray(block), 0, 65535 if top > 255 else 255)
    if top > 255:
        values += 128
        values //= 257
    return values.astype(np.uint8)[:, :, None]


def _float_grey(block: Image.Image, top: float) -> np.ndarray:
    """Float grey: the 16-bit scale when any value is over 255, 0-1 scaled up when none is over
    1, else as is; rounded, clipped to 0-255, NaN as 0 (float32, a block at a time)."""
    values = np.array(block, dtype=np.float32)
    if top > 255:
        values /= 257
    elif top <= 1.0:
        values *= 255
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    values[np.isnan(values)] = 0
    return values.astype(np.uint8)[:, :, None]
