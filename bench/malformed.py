"""A malformed-request corpus for the soak harness, generated in code and deterministic by seed.

Kinds: ``truncation`` (valid files cut at many offsets), ``bitflip`` (bits flipped in valid
files, header and body), ``random`` (random bytes, bare or behind an image signature),
``content_type`` (odd or wrong content types, empty bodies, formats off the allow-list),
``multipart`` (form edge cases), ``bomb`` (decode CPU/memory bombs, pixel-count bombs, bodies
over the byte cap) and ``request`` (wrong methods, routes and parameters). Each case carries the
statuses a correct server may answer; the harness reports any other status as unexpected.
"""

from __future__ import annotations

import io
import random
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from twinfer.samples import sample_array

KINDS = ("truncation", "bitflip", "random", "content_type", "multipart", "bomb", "request")
CLASSIFY = "/v1/models/{model}/classify"
BODY_CAP = 20 * 1024 * 1024  # serve_config.yaml's ingress.max_body_bytes
DECODE_OR_REFUSE = (200, 400, 413)  # a damaged file may still decode; refusing it is fine too


@dataclass(frozen=True)
class Case:
    name: str  # unique within a corpus
    kind: str
    body: bytes
    content_type: str | None = "application/octet-stream"  # None: no Content-Type header at all
    method: str = "POST"
    path: str = CLASSIFY  # {model} is filled in by the sender
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False  # send without Content-Length, in chunks
    expect: tuple[int, ...] = (400,)  # statuses a correct server may answer


def build_corpus(seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    files = base_files()
    cases = [
        *truncations(files, rng),
        *bit_flips(files, rng),
        *random_bodies(rng),
        *content_types(files),
        *multipart_cases(files),
        *bombs(),
        *requests(files),
    ]
    names = [c.name for c in cases]
    if len(names) != len(set(names)):
        raise AssertionError(f"duplicate case names: {sorted(n for n in names if names.count(n) > 1)}")
    return cases


def base_files() -> dict[str, bytes]:
    """Small valid images (160 px sample photo) in the formats the server accepts, plus PPM (not accepted)."""
    photo = Image.fromarray(sample_array("chelsea")).convert("RGB")
    photo.thumbnail((160, 160))
    out = {}
    for name, fmt, kwargs in [
        ("jpeg", "JPEG", {"quality": 85}),
        ("progressive", "JPEG", {"quality": 85, "progressive": True}),
        ("png", "PNG", {}),
        ("webp", "WEBP", {"quality": 80}),
        ("gif", "GIF", {}),
        ("bmp", "BMP", {}),
        ("tiff", "TIFF", {"compression": "tiff_deflate"}),
        ("ppm", "PPM", {}),
    ]:
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **kwargs)
        out[name] = buffer.getvalue()
    return out


def truncations(files: dict[str, bytes], rng: random.Random) -> list[Case]:
    cases, seen = [], set()
    for fmt in ("jpeg", "progressive", "png", "webp", "gif", "tiff"):
        data = files[fmt]
        n = len(data)
        offsets = {1, 2, 8, 20, 64, n // 4, n // 2, 3 * n // 4, n - 2} | {rng.randrange(3, n - 2) for _ in range(3)}
        for offset in sorted(o for o in offsets if 0 < o < n):
            if data[:offset] not in seen:  # a baseline and a progressive JPEG share their first bytes
                seen.add(data[:offset])
                cases.append(Case(f"truncation/{fmt}@{offset}", "truncation", data[:offset], expect=DECODE_OR_REFUSE))
    return cases


def bit_flips(files: dict[str, bytes], rng: random.Random) -> list[Case]:
    cases = []
    for fmt in ("jpeg", "png", "webp", "gif"):
        data = files[fmt]
        for i in range(6):
            flipped = bytearray(data)
            span = 64 if i < 2 else len(data)  # the first two hit the header
            bits = sorted(rng.sample(range(span * 8), 1 + i))
            for bit in bits:
                flipped[bit // 8] ^= 1 << (bit % 8)
            label = "header" if i < 2 else "any"
            cases.append(
                Case(
                    f"bitflip/{fmt}/{label}/{'.'.join(map(str, bits))}",
                    "bitflip",
                    bytes(flipped),
                    expect=DECODE_OR_REFUSE,
                )
            )
    return cases


SIGNATURES = {
    "jpeg": b"\xff\xd8\xff\xe0",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "bmp": b"BM",
    "tiff": b"II*\x00",
}


def random_bodies(rng: random.Random) -> list[Case]:
    cases = [
        Case(f"random/{size}B", "random", rng.randbytes(size), expect=(400, 415))
        for size in (1, 2, 7, 64, 500, 4096, 65536, 1_000_000)
    ]
    for fmt, signature in SIGNATURES.items():
        for size in (16, 4096):
            body = signature + rng.randbytes(size)
            cases.append(
                Case(
                    f"random/{fmt}-signature+{size}B",
                    "random",
                    body,
                    content_type=f"image/{fmt}",
                    expect=(400, 413, 415),
                )
            )
    cases.append(
        Case("random/text", "random", b"this is a plain text file, not an image\n" * 4, content_type="image/jpeg")
    )
    cases.append(Case("random/zeros-64k", "random", bytes(65536), content_type="image/png"))
    return cases


def content_types(files: dict[str, bytes]) -> list[Case]:
    jpeg = files["jpeg"]
    accepted = [
        "image/jpeg",
        "image/png",
        "IMAGE/JPEG; charset=utf-8",
        "application/octet-stream",
        "image/x-anything",
        "image/",
    ]
    refused = ["text/plain", "application/json", "application/x-www-form-urlencoded", "", "text/html; boundary=x",
               "video/mp4", "application/octet-streamx", "image", "*/*"]  # fmt: skip
    cases = [
        Case(f"content_type/accepted/{ct or 'empty'}", "content_type", jpeg, content_type=ct, expect=(200,))
        for ct in accepted
    ]
    cases += [
        Case(f"content_type/refused/{ct or 'empty'}", "content_type", jpeg, content_type=ct, expect=(415,))
        for ct in refused
    ]
    cases += [
        Case("content_type/none", "content_type", jpeg, content_type=None, expect=(200,)),  # taken as octet-stream
        Case("content_type/empty-body", "content_type", b"", content_type="image/jpeg"),
        Case("content_type/empty-body-no-type", "content_type", b"", content_type=None),
        Case("content_type/empty-body-text", "content_type", b"", content_type="text/plain", expect=(415,)),
        Case("content_type/ppm", "content_type", files["ppm"], content_type="image/x-portable-pixmap", expect=(415,)),
        Case("content_type/ico", "content_type", _encode(Image.new("RGB", (16, 16), (1, 2, 3)), "ICO"), expect=(415,)),
        Case(
            "content_type/svg",
            "content_type",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
            content_type="image/svg+xml",
        ),
        Case("content_type/png-as-jpeg", "content_type", files["png"], content_type="image/jpeg", expect=(200,)),
        Case("content_type/bmp", "content_type", files["bmp"], content_type="image/bmp", expect=(200,)),
        Case(
            "content_type/gzip-encoded",
            "content_type",
            zlib.compress(jpeg),
            content_type="image/jpeg",
            headers=(("Content-Encoding", "gzip"),),
        ),
        Case("content_type/multipart-no-boundary", "content_type", jpeg, content_type="multipart/form-data"),
    ]
    return cases


def multipart(
    parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "soakboundary", newline: bytes = b"\r\n"
) -> bytes:
    """A multipart/form-data body of (field name, filename or None, content type or None, payload)."""
    out = b""
    for name, filename, content_type, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        lines = [f"--{boundary}".encode(), f"Content-Disposition: {disposition}".encode()]
        if content_type:
            lines.append(f"Content-Type: {content_type}".encode())
        out += newline.join(lines) + newline + newline + payload + newline
    return out + f"--{boundary}--".encode() + newline


def multipart_cases(files: dict[str, bytes]) -> list[Case]:
    jpeg = files["jpeg"]
    form = "multipart/form-data; boundary=soakboundary"
    good = multipart([("file", "cat.jpg", "image/jpeg", jpeg)])

    def case(name: str, body: bytes, expect=(400,), content_type: str = form) -> Case:
        return Case(f"multipart/{name}", "multipart", body, content_type=content_type, expect=expect)

    return [
        case("valid", good, expect=(200,)),
        case("valid-text-plain-part", multipart([("file", "cat.txt", "text/plain", jpeg)]), expect=(200,)),
        case("valid-unicode-filename", multipart([("file", "kätzchen 猫.jpg", "image/jpeg", jpeg)]), expect=(200,)),
        case(
            "valid-extra-field",
            multipart([("note", None, None, b"hello"), ("file", "a.jpg", "image/jpeg", jpeg)]),
            expect=(200,),
        ),
        case("lf-only", multipart([("file", "a.jpg", "image/jpeg", jpeg)], newline=b"\n"), expect=(200, 400)),
        case("no-file-field", multipart([("image", "a.jpg", "image/jpeg", jpeg)])),
        case("file-as-text-field", multipart([("file", None, None, b"not a file")])),
        case("empty-file", multipart([("file", "a.jpg", "image/jpeg", b"")])),
        case("two-files", multipart([("file", "a.jpg", "image/jpeg", jpeg), ("file2", "b.jpg", "image/jpeg", jpeg)])),
        case("corrupt-jpeg", multipart([("file", "a.jpg", "image/jpeg", jpeg[: len(jpeg) // 2])])),
        case(
            "random-bytes", multipart([("file", "a.bin", "application/octet-stream", random.Random(7).randbytes(2000))])
        ),
        case(
            "many-fields",
            multipart([(f"f{i}", None, None, b"x") for i in range(40)] + [("file", "a.jpg", "image/jpeg", jpeg)]),
        ),
        case("no-closing-boundary", good[: -len(b"--soakboundary--\r\n")], expect=(200, 400)),
        case("cut-in-part-headers", good[:40]),
        case("cut-in-payload", good[: len(good) // 2]),
        case("boundary-mismatch", good, content_type="multipart/form-data; boundary=otherboundary"),
        case("empty-boundary", good, content_type="multipart/form-data; boundary="),
        case("empty-body", b""),
        case("only-closing-boundary", b"--soakboundary--\r\n"),
        case("garbage", b"\x00\xff" * 300),
        case(
            "header-line-64k",
            b"--soakboundary\r\nX-Long: " + b"a" * 65536 + b"\r\n\r\n" + jpeg + b"\r\n--soakboundary--\r\n",
        ),
        case(
            "no-disposition", b"--soakboundary\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--soakboundary--\r\n"
        ),
        case(
            "nested-multipart",
            multipart(
                [("file", "inner", "multipart/mixed; boundary=inner", b"--inner\r\n\r\n" + jpeg + b"\r\n--inner--\r\n")]
            ),
        ),
    ]


# ---- bombs: small or valid files that cost far more to decode than their size suggests ----


def png(width: int, height: int, bit_depth: int, color_type: int, first_row: bytes) -> bytes:
    """A PNG whose first row is ``first_row`` (raw samples) and every later row repeats it (filter Up:
    all zeros), so that a picture of many megapixels compresses to a few hundred KB."""
    row_bytes = len(first_row)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)  # zero rows: as small as level 9, 3x faster
    idat = compressor.compress(b"\x00" + first_row)
    zero_row = b"\x02" + bytes(row_bytes)
    block = zero_row * 64
    for _ in range((height - 1) // 64):
        idat += compressor.compress(block)
    idat += compressor.compress(zero_row * ((height - 1) % 64)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND")


def png_16bit(width: int = 6300, height: int = 6300) -> bytes:
    """Greyscale 16-bit: the decoder holds 2 bytes a pixel, the RGB conversion several float copies."""
    return png(width, height, 16, 0, np.linspace(0, 65535, width).astype(">u2").tobytes())


def png_rgba(width: int = 6000, height: int = 6000) -> bytes:
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    return png(width, height, 8, 6, np.stack([ramp, ramp[::-1], np.full_like(ramp, 90), ramp], 1).tobytes())


def pixel_count_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (the data holds one row)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + _chunk(b"IEND")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG with its frame header's size patched to ``width`` x ``height``."""
    data = bytearray(_encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    image = data.index(b"\x2c")  # image descriptor
    data[image + 5 : image + 9] = struct.pack("<HH", width, height)
    return bytes(data)


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
    per repeat, no error) to exactly the picture of the plain file, one pass over all blocks each."""
    buffer = io.BytesIO()
    blocky(width, height, mode).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    own = jpeg_scans(data)
    start, end = own[-1]
    return data[:end] + data[start:end] * (scans - len(own)) + data[end:]


def jpeg_with_segments(count: int) -> bytes:
    """A small valid JPEG with ``count`` empty comment segments before its frame."""
    data = _encode(Image.new("RGB", (32, 32), (9, 99, 199)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


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


def bombs() -> list[Case]:
    over_cap = bytes(BODY_CAP + 1024 * 1024)
    too_large = (413,)
    decoded_or_refused = (200, 400, 413)  # the cost may be bounded by refusing (413 image_too_complex) or by decoding
    return [
        Case(
            "bomb/progressive-500-scans-4096px",
            "bomb",
            scan_bomb(4096, 4096, 500),
            content_type="image/jpeg",
            expect=decoded_or_refused,
        ),
        Case("bomb/png-16bit-6300x6300", "bomb", png_16bit(), content_type="image/png", expect=decoded_or_refused),
        Case("bomb/png-rgba-6000x6000", "bomb", png_rgba(), content_type="image/png", expect=decoded_or_refused),
        Case("bomb/png-claims-10000x10000", "bomb", pixel_count_bomb(), content_type="image/png", expect=too_large),
        Case(
            "bomb/png-claims-65535x65535",
            "bomb",
            pixel_count_bomb(65535, 65535),
            content_type="image/png",
            expect=too_large,
        ),
        Case(
            "bomb/jpeg-claims-65000x65000",
            "bomb",
            jpeg_claiming(65000, 65000),
            content_type="image/jpeg",
            expect=too_large,
        ),
        Case(
            "bomb/gif-claims-65535x65535",
            "bomb",
            gif_claiming(65535, 65535),
            content_type="image/gif",
            expect=too_large,
        ),
        Case(
            "bomb/jpeg-100k-comment-segments",
            "bomb",
            jpeg_with_segments(100_000),
            content_type="image/jpeg",
            expect=decoded_or_refused,
        ),
        Case(
            "bomb/tiff-200k-strips",
            "bomb",
            tiff_with_strips(200_000),
            content_type="image/tiff",
            expect=decoded_or_refused,
        ),
        Case("bomb/body-21MiB", "bomb", over_cap, content_type="image/jpeg", expect=too_large),
        Case("bomb/body-21MiB-chunked", "bomb", over_cap, content_type="image/jpeg", chunked=True, expect=too_large),
        Case(
            "bomb/body-21MiB-multipart",
            "bomb",
            multipart([("file", "big.jpg", "image/jpeg", over_cap)]),
            content_type="multipart/form-data; boundary=soakboundary",
            expect=too_large,
        ),  # fmt: skip
    ]


def requests(files: dict[str, bytes]) -> list[Case]:
    jpeg = files["jpeg"]

    def case(
        name: str, expect: tuple[int, ...], method: str = "POST", path: str = CLASSIFY, body: bytes = jpeg
    ) -> Case:
        return Case(
            f"request/{name}", "request", body, content_type="image/jpeg", method=method, path=path, expect=expect
        )

    return [
        case("get-classify", (405,), method="GET", body=b""),
        case("put-classify", (405,), method="PUT"),
        case("delete-classify", (405,), method="DELETE", body=b""),
        case("options-classify", (405,), method="OPTIONS", body=b""),
        case("post-models-list", (405,), path="/v1/models"),
        case("unknown-model", (404,), path="/v1/models/no_such_model/classify"),
        case("model-name-with-dots", (404,), path="/v1/models/..%2F..%2Fetc/classify"),
        case("wrong-task", (404,), path="/v1/models/{model}/detect"),
        case("unknown-route", (404,), path="/v1/anything"),  # /v2/... answers in the protocol's format
        case("deep-route", (404,), path="/v1/models/{model}/classify/extra"),
        case("top_k-0", (422,), path=CLASSIFY + "?top_k=0"),
        case("top_k-1000", (422,), path=CLASSIFY + "?top_k=1000"),
        case("top_k-text", (422,), path=CLASSIFY + "?top_k=abc"),
        case("top_k-float", (422,), path=CLASSIFY + "?top_k=2.5"),
        case("top_k-huge", (422,), path=CLASSIFY + "?top_k=" + "9" * 400),
        case("top_k-1", (200,), path=CLASSIFY + "?top_k=1"),
        case(
            "query-10k-params",
            (200, 400, 413, 414, 422),
            path=CLASSIFY + "?" + "&".join(f"p{i}=1" for i in range(10_000)),
        ),
    ]


def _chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()
