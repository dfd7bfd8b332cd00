"""A malformed-request corpus for the soak harness, generated in code and deterministic by seed.

Kinds: ``truncation`` (valid files cut at many offsets), ``bitflip`` (bits flipped in valid
files, header and body), ``random`` (random bytes, bare or behind an image signature),
``content_type`` (odd or wrong content types, empty bodies, formats off the allow-list),
``multipart`` (form edge cases), ``bomb`` (decode CPU/memory bombs, pixel-count bombs, bodies
over the byte cap), ``request`` (wrong methods, routes and parameters) and ``v2`` (Open Inference
Protocol bodies: truncated binary tensors, lying lengths, wrong datatypes and shapes, deep and huge
JSON, non-finite numbers, gzip and deflate bombs). Each case carries the statuses a correct server
may answer; the harness reports any other status as unexpected.

``grpc_corpus`` is the same for ``inference.GRPCInferenceService/ModelInfer``: serialized messages
(and bytes that are none), each with the gRPC status codes a correct server may answer.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from twinfer.samples import sample_array

KINDS = ("truncation", "bitflip", "random", "content_type", "multipart", "bomb", "request", "v2")
CLASSIFY = "/v1/models/{model}/classify"
INFER = "/v2/models/{model}/infer"
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
        *v2_cases(files),
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


# ---- the Open Inference Protocol over HTTP ------------------------------------------------------------------
def v2_header(count: int = 1, size: int | None = None, **tensor) -> dict:
    """A request's JSON: one ``image`` input, in binary (``size``: binary_data_size) unless ``data`` is given."""
    parameters = {} if size is None else {"binary_data_size": size}
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count], "parameters": parameters, **tensor}]}


def v2_binary(images: list[bytes], header: dict | None = None) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """JSON + binary tensor data, as tritonclient sends it; the headers to send with it."""
    payload = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = header if header is not None else v2_header(len(images), len(payload))
    text = json.dumps(header).encode()
    return text + payload, (("Inference-Header-Content-Length", str(len(text))),)


def v2_json(images: list[bytes], **extra) -> bytes:
    data = [base64.b64encode(i).decode() for i in images]
    return json.dumps({**v2_header(len(images), data=data), **extra}).encode()


def v2_cases(files: dict[str, bytes]) -> list[Case]:
    jpeg = files["jpeg"]
    cases: list[Case] = []

    def case(name: str, body: bytes, expect: tuple[int, ...] = (400,), headers=(), method="POST", path=INFER,
             content_type="application/json") -> None:  # fmt: skip
        cases.append(Case(f"v2/{name}", "v2", body, content_type=content_type, method=method, path=path,
                          headers=tuple(headers), expect=expect))  # fmt: skip

    good, good_headers = v2_binary([jpeg, jpeg])
    case("good-binary", good, (200,), good_headers, content_type="application/octet-stream")
    case("good-json", v2_json([jpeg]), (200,))
    # truncated binary tensors and lying lengths
    for cut in (1, 4, 7, len(good) // 2, len(good) - 1):
        case(f"binary-cut-{cut}-from-end", good[:-cut], (400,), good_headers)
    element = struct.pack("<I", 10**6) + jpeg  # announces a megabyte
    body, headers = v2_binary([], v2_header(1, len(element)))
    case("element-longer-than-data", body + element, (400,), headers)
    for value in ("0", "-5", "abc", "9" * 5000, str(len(good) * 2), "+12", "1e3"):
        case(f"header-length-{value[:12]}", good, (400,), (("Inference-Header-Content-Length", value),))
    zeros, headers = v2_binary([], v2_header(1, 4_000_000))
    case("zeros-past-count", zeros + bytes(4_000_000), (400,), headers)
    # wrong datatypes, shapes, inputs
    for name, tensor in (
        ("datatype-uint8", {"datatype": "UINT8"}),
        ("datatype-fp32", {"datatype": "FP32"}),
        ("shape-0", {"shape": [0]}),
        ("shape-257", {"shape": [257]}),
        ("shape-2x2", {"shape": [2, 2]}),
        ("shape-negative", {"shape": [-1]}),
        ("shape-text", {"shape": ["1"]}),
        ("shape-huge", {"shape": [10**30]}),
        ("shape-float", {"shape": [1.5]}),
        ("name", {"name": "pixels"}),
        ("shared-memory", {"parameters": {"shared_memory_region": "r"}}),
        ("count-mismatch", {"shape": [3]}),
    ):
        header = v2_header(1, len(jpeg) + 4)
        header["inputs"][0].update(tensor)
        body, headers = v2_binary([], header)
        case(name, body + struct.pack("<I", len(jpeg)) + jpeg, (400,), headers)
    case("two-inputs", json.dumps({"inputs": [v2_header()["inputs"][0]] * 2}).encode())
    case("no-inputs", b'{"outputs": []}')
    case("base64-invalid", json.dumps(v2_header(1, data=["***"])).encode())
    case("base64-count-first", json.dumps(v2_header(1, data=["***"] * 300)).encode())
    case("data-nested-3", json.dumps(v2_header(1, data=[[["AAAA"]]])).encode())
    case("not-an-image", v2_json([b"hello"]), (400,))
    case("empty-image", v2_json([b""]), (400,))
    # deep and huge JSON
    case("brackets-100k", b"[" * 100_000)
    case("braces-5000", b"{" * 5000)
    case("nested-1500", b'{"inputs": ' + b"[" * 1500 + b"]" * 1500 + b"}")
    case("commas-1m", b"[" + b"0," * 1_000_000 + b"0]")
    case("huge-integer", b'{"id": ' + b"9" * 100_000 + b"}")
    case("not-json", b"\x00\xff" * 1000)
    case("not-utf8", b'{"inputs": "\xff\xfe"}')
    case("json-scalar", b"42")
    case("string-20k-escapes", json.dumps({"id": "\u00e9" * 20_000}).encode())
    # parameters: non-finite, wrong types
    for name, parameters, expect in (
        ("top_k-infinity", b'{"top_k": Infinity}', 422),
        ("top_k-nan", b'{"top_k": NaN}', 422),
        ("top_k-minus-infinity", b'{"top_k": -Infinity}', 422),
        ("top_k-1e400", b'{"top_k": 1e400}', 422),
        ("top_k-digits", b'{"top_k": "' + b"9" * 5000 + b'"}', 422),
        ("top_k-list", b'{"top_k": [5]}', 422),
        ("binary-output-text", b'{"binary_data_output": "false"}', 422),
        ("parameters-list", b"[1, 2]", 400),
    ):
        body = v2_json([jpeg])[:-1] + b', "parameters": ' + parameters + b"}"
        case(name, body, (expect,))
    for name, outputs, expect in (
        ("output-unknown", [{"name": "pixels"}], 422),
        ("output-twice", [{"name": "scores"}, {"name": "scores"}], 400),
        ("output-class-count-0", [{"name": "scores", "parameters": {"classification": 0}}], 422),
        ("output-class-count-nan", [{"name": "scores", "parameters": {"classification": "nan"}}], 422),
        ("output-binary-text", [{"name": "scores", "parameters": {"binary_data": "no"}}], 422),
        ("outputs-object", {"name": "scores"}, 400),
    ):
        case(name, v2_json([jpeg], outputs=outputs), (expect,))
    # compressed bodies
    inflates_past_cap = gzip.compress(bytes(BODY_CAP + 1), 9, mtime=0)
    zero_tensor, headers = v2_binary([], v2_header(1, BODY_CAP - 200))
    case("gzip-bomb-zero-tensor", gzip.compress(zero_tensor + bytes(BODY_CAP - 200), 9, mtime=0), (400, 413),
         (*headers, ("Content-Encoding", "gzip")))  # fmt: skip
    case("gzip-past-cap", inflates_past_cap, (413,), (("Content-Encoding", "gzip"),))
    case("deflate-past-cap", zlib.compress(bytes(BODY_CAP + 1), 9), (413,), (("Content-Encoding", "deflate"),))
    case("gzip-cut-off", gzip.compress(v2_json([jpeg]), mtime=0)[:-20], (400,), (("Content-Encoding", "gzip"),))
    case("gzip-not-gzip", v2_json([jpeg]), (400,), (("Content-Encoding", "gzip"),))
    case("encoding-br", v2_json([jpeg]), (415,), (("Content-Encoding", "br"),))
    case("body-over-cap", bytes(BODY_CAP + 1), (413,))
    # routes and methods
    case("get-infer", b"", (405,), method="GET")
    case("unknown-model", v2_json([jpeg]), (404,), path="/v2/models/no_such_model/infer")
    case("unknown-version", v2_json([jpeg]), (404,), path="/v2/models/{model}/versions/7/infer")
    case("unknown-route", b"", (404,), method="GET", path="/v2/models/{model}/versions")
    return cases


# ---- the Open Inference Protocol over gRPC --------------------------------------------------------------------
@dataclass(frozen=True)
class GrpcCase:
    name: str
    message: bytes  # a serialized ModelInferRequest, or bytes that are none
    expect: tuple[str, ...]  # grpc.StatusCode names a correct server may answer


def grpc_corpus(pb, model: str, message_limit: int) -> list[GrpcCase]:
    """``pb``: the protocol's generated message module (``deployments.v2.open_inference_grpc_pb2``,
    or tritonclient's, which defines the same messages); ``message_limit``: the server's."""
    jpeg = base_files()["jpeg"]
    invalid = ("INVALID_ARGUMENT",)

    def request(count=1, raw=None, contents=None, datatype="BYTES", name="image", inputs=1, **parameters):
        message = pb.ModelInferRequest(model_name=model, id="corpus")
        for _ in range(inputs):
            tensor = message.inputs.add(name=name, datatype=datatype, shape=[count])
            if contents is not None:
                tensor.contents.bytes_contents.extend(contents)
        if raw is not None:
            message.raw_input_contents.append(raw)
        for key, value in parameters.items():
            if isinstance(value, bool):
                message.parameters[key].bool_param = value
            elif isinstance(value, str):
                message.parameters[key].string_param = value
            elif isinstance(value, float):
                message.parameters[key].double_param = value
            else:
                message.parameters[key].int64_param = value
        return message.SerializeToString()

    good = request(raw=struct.pack("<I", len(jpeg)) + jpeg)
    cases = [
        GrpcCase("good", good, ("OK",)),
        GrpcCase("good-contents", request(2, contents=[jpeg, jpeg]), ("OK",)),
        GrpcCase("over-message-limit", request(raw=bytes(message_limit + 1)), ("RESOURCE_EXHAUSTED",)),
        GrpcCase("zeros-past-count", request(raw=bytes(1_000_000)), invalid),
        GrpcCase("element-longer-than-data", request(raw=struct.pack("<I", 10**6) + jpeg), invalid),
        GrpcCase("count-mismatch", request(3, contents=[jpeg]), invalid),
        GrpcCase("raw-and-contents", request(raw=good[:10], contents=[jpeg]), invalid),
        GrpcCase("datatype", request(datatype="UINT8", contents=[jpeg]), invalid),
        GrpcCase("name", request(name="pixels", contents=[jpeg]), invalid),
        GrpcCase("two-inputs", request(contents=[jpeg], inputs=2), invalid),
        GrpcCase("no-inputs", request(inputs=0), invalid),
        GrpcCase("shape-257", request(257, contents=[jpeg] * 257), invalid),
        GrpcCase("shape-huge", request(2**62, contents=[jpeg]), invalid),
        GrpcCase("shape-negative", request(-1, contents=[jpeg]), invalid),
        GrpcCase("not-an-image", request(contents=[b"hello"]), invalid),
        GrpcCase("top_k-infinity", request(contents=[jpeg], top_k=float("inf")), invalid),
        GrpcCase("top_k-nan", request(contents=[jpeg], top_k=float("nan")), invalid),
        GrpcCase("top_k-digits", request(contents=[jpeg], top_k="9" * 5000), invalid),
        GrpcCase("top_k-bool", request(contents=[jpeg], top_k=True), invalid),
        GrpcCase("threshold-nan", request(contents=[jpeg], score_threshold=float("nan")), ("OK", "INVALID_ARGUMENT")),
        GrpcCase("unknown-model", good.replace(model.encode(), b"x" * len(model), 1), ("NOT_FOUND",)),
        # bytes that are no ModelInferRequest
        GrpcCase("not-protobuf", b"\xff" * 64, invalid),
        GrpcCase("protobuf-cut-off", good[: len(good) // 2], invalid),
    ]
    return cases
