"""Test images made in code: sample photos, every Pillow mode, and broken files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from bench.malformed import blocky, jpeg_scans, scan_bomb, tiff_with_strips  # noqa: F401  (tests use images.<name>)
from twinfer.samples import encode, sample_array


def small_photo(name: str = "chelsea", size: int = 96) -> np.ndarray:
    image = Image.fromarray(sample_array(name)).convert("RGB")
    image.thumbnail((size, size))
    return np.array(image)  # writable, like decode_image returns


def small_jpeg(name: str = "chelsea", size: int = 96) -> bytes:
    return encode(small_photo(name, size))


def in_mode(mode: str, size=(40, 30)) -> bytes:
    """A small PNG/TIFF in the given Pillow mode."""
    w, h = size
    gradient = np.linspace(0, 255, w * h, dtype=np.float64).reshape(h, w)
    rgb = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 80)], 2).astype(np.uint8))
    buffer = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((gradient * 257).astype(np.uint16)).save(buffer, "PNG")
    elif mode == "CMYK":
        rgb.convert("CMYK").save(buffer, "JPEG")
    elif mode == "P":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, "PNG")
    else:
        rgb.convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def animated_gif(size=(20, 10)) -> bytes:
    frames = [Image.new("RGB", size, color) for color in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def jpeg_with_orientation(orientation: int, size=(40, 20)) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def corrupt_jpeg() -> bytes:
    data = bytearray(small_jpeg())
    middle = len(data) // 2
    data[middle : middle + 400] = b"\x00" * 400
    data[200:260] = b"\xff" * 60
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = small_jpeg()
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    return b"this is a plain text file, not an image\n" * 4


def pixel_bomb(width=10_000, height=10_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (patches the IHDR of a 1x1 PNG)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width/height; the CRC no longer matches
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def unsupported_format() -> bytes:
    """A valid image in a format outside the default allow-list (PPM)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PPM")
    return buffer.getvalue()


def in_format(fmt: str, size=(16, 16)) -> bytes:
    """A small, valid image in any format Pillow writes (``"ICO"``, ``"EPS"``, ``"TGA"``...)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, fmt)
    return buffer.getvalue()


def multi_picture_jpeg(size=(30, 20)) -> bytes:
    """An MPO, as phones write them: two JPEGs, the first the picture shown."""
    frames = [Image.new("RGB", size, (200, 10, 10)), Image.new("RGB", size, (10, 10, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


# ---- decode-work bombs: valid files that cost far more to decode than their size suggests ----


def tiff_around(strip: bytes, width: int, height: int, compression: int = 7) -> bytes:
    """A grey TIFF of one strip holding ``strip`` (JPEG compression: a whole JPEG stream)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, compression), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(strip))]  # fmt: skip
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        value = data_at if tag == 273 else value
        field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + field
    return bytes(out + b"\x00" * 4 + strip)


def png_chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_chunks(extra: bytes) -> bytes:
    """A valid 8 x 8 grey PNG with ``extra`` (whole chunks) between its header and its data."""
    data = in_mode("L", (8, 8))
    idat = data.index(b"IDAT") - 4
    return data[:idat] + extra + data[idat:]


def gif_with_extension(label: int, count: int, size: int = 1) -> bytes:
    """A valid 8 x 8 GIF with one extension block (``label``) of ``count`` sub-blocks of ``size``
    bytes before its picture."""
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF")
    data = buffer.getvalue()
    flags = data[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    extension = b"!" + bytes([label]) + (bytes([size]) + b"x" * size) * count + b"\x00"
    return data[:start] + extension + data[start:]


def jpeg_with_segments(count: int) -> bytes:
    """A valid small JPEG with ``count`` empty comment segments before its first scan."""
    data = small_jpeg()
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def bmp_rle8(width: int, height: int) -> bytes:
    """An RLE8 grey BMP: each row one pixel, then end-of-line (Pillow pads the rest in Python)."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    body = b"\x01\x07\x00\x00" * height + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return header + info + palette + body
