"""Test images made in code: sample photos, every Pillow mode, and broken files."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

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


def blocky(width: int, height: int, mode: str = "L", seed: int = 0) -> Image.Image:
    """An image of flat 16 x 16 blocks: every JPEG AC coefficient is zero (chroma subsampled
    too), so a progressive file's AC scans are a few bytes of end-of-band runs however large
    the image, yet the decoder still walks every block for each."""
    bands = len(mode)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, ((height + 15) // 16, (width + 15) // 16, bands), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((16, 16, 1), np.uint8))[:height, :width]
    return Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels, mode)


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG: its SOS segment and entropy-coded data."""
    scans, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:  # entropy-coded data runs to the next marker other than RSTn
            end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, end).start()
            scans.append((pos, end))
        pos = end
    return scans


def scan_bomb(width: int, height: int, scans: int, mode: str = "L") -> bytes:
    """A progressive JPEG of ``blocky(width, height, mode)`` with ``scans`` scans in all: its last
    scan (an AC refinement, all end-of-band runs) repeated. libjpeg decodes every copy (a warning
    per repeat, no error) to exactly the picture of the plain file, at ~1.1 ns a pixel per scan."""
    buffer = io.BytesIO()
    blocky(width, height, mode).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    own = jpeg_scans(data)
    start, end = own[-1]
    return data[:end] + data[start:end] * (scans - len(own)) + data[end:]


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


def tiff_with_strips(strips: int, width: int = 8) -> bytes:
    """An uncompressed grey TIFF of ``strips`` one-row strips, every one the same 8 bytes."""
    entries = 9
    offsets_at = 8 + 2 + 12 * entries + 4
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 2 * strips
    tags = [(256, 3, 1, width), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, strips, offsets_at), (277, 3, 1, 1), (278, 3, 1, 1), (279, 3, strips, counts_at)]  # fmt: skip
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, entries))
    for tag, kind, count, value in tags:
        short = kind == 3 and count == 1
        field = struct.pack("<HH", value, 0) if short else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + field
    out += b"\x00" * 4 + struct.pack(f"<{strips}I", *[pixels_at] * strips)
    out += struct.pack(f"<{strips}H", *[width] * strips)
    return bytes(out + bytes(range(width)))


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
