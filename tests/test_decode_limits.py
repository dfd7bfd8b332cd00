"""Decode work is bounded before decoding: byte cap, JPEG scans, Python-parsed structures.

Every refused file here is valid: Pillow decodes each one, slowly (what the caps prevent). The
tests assert the answer and that no pixel decoding started, never a time.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from batch.decode_stage import load_one
from shared import ImageLoader, ModelConfig
from shared.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_JPEG_SCANS,
    MAX_BMP_RLE_PIXELS,
    MAX_HEADER_STEPS,
    MAX_PNG_INFLATED_CHUNKS,
    decode_image,
    open_image,
)
from shared.errors import ImageTooComplex, ImageTooLarge
from tests import images
from twinfer.samples import sample_array

ON_DEVICE = {"device": "cuda", "decode": {"on_device": True}}


@pytest.fixture
def pixel_loads(monkeypatch) -> list[str]:
    """Formats whose pixel decoding (``ImageFile.load``) started."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.format)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def refused(data: bytes, **limits) -> ImageTooComplex:
    with pytest.raises(ImageTooComplex) as info:
        decode_image(data, **limits)
    assert info.value.code == "image_too_complex" and info.value.http_status == 413
    return info.value


# ---- byte cap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, ON_DEVICE], ids=["cpu", "on_device"])
def test_max_bytes_is_enforced_by_the_loader_on_both_paths(config):
    data = images.small_jpeg()
    capped = {**config, "decode": {**config.get("decode", {}), "max_bytes": 1000}}
    loader = ImageLoader(ModelConfig.model_validate(capped))
    with pytest.raises(ImageTooLarge) as info:
        loader.load(data)
    assert info.value.code == "image_too_large"
    assert f"{len(data)} bytes" in str(info.value) and "1000" in str(info.value)
    ImageLoader(ModelConfig.model_validate(config)).load(data)  # under the default cap


def test_default_byte_cap_is_the_http_body_cap():
    with pytest.raises(ImageTooLarge, match=str(DEFAULT_MAX_BYTES)):
        decode_image(images.small_jpeg() + b"\x00" * DEFAULT_MAX_BYTES)


# ---- JPEG scans --------------------------------------------------------------------------------


def test_the_scan_bomb_is_a_jpeg_libjpeg_decodes_to_its_picture():
    """The generator makes what the caps are for: a valid file, not one libjpeg rejects."""
    bomb = images.scan_bomb(64, 48, 300)
    assert bomb.count(b"\xff\xda") == 300
    decoded = np.asarray(Image.open(io.BytesIO(bomb)))
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(images.scan_bomb(64, 48, 6)))))
    assert np.abs(decoded.astype(int) - np.asarray(images.blocky(64, 48))).max() <= 2  # JPEG rounding


def test_a_scan_bomb_is_refused_before_decoding(pixel_loads):
    # 1 Mpx x 1000 scans: ~1 s of libjpeg CPU for a 25 KB file, and the cost grows with both
    bomb = images.scan_bomb(1024, 1024, 1000)
    assert len(bomb) < 40_000
    error = refused(bomb)
    assert "more than 100 scans" in str(error) and pixel_loads == []


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_scan_cap_is_well_above_real_encoders(mode):
    progressive = io.BytesIO()
    images.blocky(64, 64, mode).save(progressive, "JPEG", progressive=True, optimize=True)
    assert progressive.getvalue().count(b"\xff\xda") <= 18 < DEFAULT_MAX_JPEG_SCANS
    assert decode_image(progressive.getvalue()).shape == (64, 64, 3)
    assert decode_image(images.scan_bomb(64, 64, DEFAULT_MAX_JPEG_SCANS, mode)).shape == (64, 64, 3)
    refused(images.scan_bomb(64, 64, DEFAULT_MAX_JPEG_SCANS + 1, mode))


def test_scans_times_pixels_is_capped_by_default_from_max_pixels(pixel_loads):
    # max_pixels 100k: the budget is 24 x 100k = 2.4M; 256 x 256 = 65536 pixels -> 36 scans fit
    limits = {"max_pixels": 100_000}
    assert decode_image(images.scan_bomb(256, 256, 36), **limits).shape == (256, 256, 3)
    pixel_loads.clear()
    error = refused(images.scan_bomb(256, 256, 37), **limits)
    assert "37 scans x 65536 pixels" in str(error) and pixel_loads == []
    raised = decode_image(images.scan_bomb(256, 256, 37), max_pixels=100_000, max_jpeg_scan_pixels=3_000_000)
    assert raised.shape == (256, 256, 3)


def test_real_photos_pass_at_the_pixel_cap_budget():
    photo = io.BytesIO()
    Image.fromarray(sample_array("chelsea")).save(photo, "JPEG", progressive=True)
    pixels = 451 * 300
    # a colour progressive photo at exactly the pixel cap, under the default budget
    assert decode_image(photo.getvalue(), max_pixels=pixels).shape == (300, 451, 3)
    assert decode_image(images.multi_picture_jpeg(), max_pixels=600).shape == (20, 30, 3)


@pytest.mark.parametrize("config", [{}, ON_DEVICE], ids=["cpu", "on_device"])
def test_a_scan_bomb_is_an_image_too_complex_error_online_and_an_error_row_offline(config, pixel_loads):
    loader = ImageLoader(ModelConfig.model_validate(config))
    bomb = images.scan_bomb(512, 512, 400)
    with pytest.raises(ImageTooComplex):
        loader.load(bomb)
    code, message, item = load_one(loader, bomb)
    assert code == "image_too_complex" and "scans" in message and item is None
    assert pixel_loads == []


def test_config_carries_the_scan_caps():
    loader = ImageLoader(ModelConfig(decode={"max_jpeg_scans": 5}))
    with pytest.raises(ImageTooComplex):
        loader.load(images.scan_bomb(32, 32, 6))
    loader = ImageLoader(ModelConfig(decode={"max_jpeg_scan_pixels": 1024 * 5}))
    with pytest.raises(ImageTooComplex):
        loader.load(images.scan_bomb(32, 32, 6))
    assert ImageLoader(ModelConfig(decode={"max_jpeg_scan_pixels": 1024 * 6})).load(images.scan_bomb(32, 32, 6))


def test_jpeg_compressed_tiff_scans_are_budgeted_too(pixel_loads):
    # libtiff itself stops at 100 scans a strip: 99 over a 40 Mpx strip would be ~4 s
    tiff = images.tiff_around(images.scan_bomb(256, 256, 99), 256, 256)
    assert Image.open(io.BytesIO(tiff)).info["compression"] == "jpeg"
    error = refused(tiff, max_pixels=100_000)
    assert "TIFF" in str(error) and pixel_loads == []
    plain = images.tiff_around(images.scan_bomb(256, 256, 6), 256, 256)
    assert decode_image(plain, max_pixels=100_000).shape == (256, 256, 3)


# ---- structures Pillow walks in Python -------------------------------------------------------


def test_a_jpeg_header_of_many_segments_is_refused_unparsed(monkeypatch):
    flood, fine = images.jpeg_with_segments(MAX_HEADER_STEPS), images.jpeg_with_segments(100)
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1))
    refused(flood)
    assert opened == []
    monkeypatch.undo()
    assert decode_image(fine).shape == (64, 96, 3)


def test_a_png_of_many_chunks_is_refused():
    refused(images.png_with_chunks(images.png_chunk(b"abCd") * MAX_HEADER_STEPS))
    assert decode_image(images.png_with_chunks(images.png_chunk(b"abCd") * 1000)).shape == (8, 8, 3)
    # empty data chunks count as much as any
    data = images.in_mode("L", (8, 8))
    idat = data.index(b"IDAT") - 4
    refused(data[:idat] + images.png_chunk(b"IDAT") * MAX_HEADER_STEPS + data[idat:])


def test_a_png_of_many_compressed_metadata_chunks_is_refused():
    import zlib

    icc = images.png_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(bytes(1000)))
    refused(images.png_with_chunks(icc * (MAX_PNG_INFLATED_CHUNKS + 1)))
    text = images.png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"v"))
    refused(images.png_with_chunks(text * (MAX_PNG_INFLATED_CHUNKS + 1)))
    assert decode_image(images.png_with_chunks(icc + text * 10)).shape == (8, 8, 3)


def test_a_gif_of_many_blocks_before_its_picture_is_refused():
    refused(images.gif_with_extension(0x01, MAX_HEADER_STEPS))
    refused(images.gif_with_extension(0xFE, MAX_HEADER_STEPS))  # a comment
    assert decode_image(images.gif_with_extension(0xFE, 1000, size=255)).shape == (8, 8, 3)


def test_a_tiff_of_many_uncompressed_strips_is_refused():
    refused(images.tiff_with_strips(MAX_HEADER_STEPS))
    assert decode_image(images.tiff_with_strips(1000)).shape == (1000, 8, 3)


def test_a_large_rle_bmp_is_refused_and_a_small_one_decodes(pixel_loads):
    assert decode_image(images.bmp_rle8(64, 64))[0, 0, 0] == 7
    pixel_loads.clear()
    # Pillow pads each row in Python, a byte at a time: ~0.3 us a pixel from a 9 KB file
    error = refused(images.bmp_rle8(2048, MAX_BMP_RLE_PIXELS // 2048 + 1))
    assert "RLE" in str(error) and pixel_loads == []


def test_the_checks_stop_at_their_caps_on_a_20_mib_body():
    """A body at the byte cap made of what each walk counts is refused (the walks stop at the cap)."""
    body = DEFAULT_MAX_BYTES - 4096
    floods = [
        images.jpeg_with_segments(body // 4),
        images.png_with_chunks(images.png_chunk(b"abCd") * (body // 12)),
        images.gif_with_extension(0x01, body // 2),
        images.small_jpeg() + b"\xff\xda" * (body // 2),  # SOS markers, counted wherever they are
    ]
    for data in floods:
        assert len(data) <= DEFAULT_MAX_BYTES
        with pytest.raises(ImageTooComplex):
            open_image(data)
