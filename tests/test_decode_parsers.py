"""Only the allow-listed formats' Pillow plug-ins ever parse the bytes of an upload.

Every other plug-in's ``_open`` (its header parser) is replaced by a recorder that fails the test
if it runs; the answers stay the same: a real image of a refused format is ``unsupported_format``
(recognised by its magic bytes alone), anything else ``invalid_image``.
"""

from __future__ import annotations

import pytest
from PIL import Image

from shared import ImageLoader, ModelConfig
from shared.decode import DEFAULT_FORMATS, decode_image
from shared.errors import InvalidImage, UnsupportedFormat
from tests import images


@pytest.fixture
def parsed(monkeypatch) -> list[str]:
    """The formats whose plug-in factory (header parser) ran, for every format Pillow knows."""
    Image.init()
    calls: list[str] = []
    for name, (factory, accept) in list(Image.OPEN.items()):

        def recording(fp, filename=None, _name=name, _factory=factory):
            calls.append(_name)
            return _factory(fp, filename)

        monkeypatch.setitem(Image.OPEN, name, (recording, accept))
    return calls


REFUSED_FORMATS = ["PPM", "ICO", "EPS", "PCX", "SGI", "QOI", "DDS", "XBM", "JPEG2000", "DIB"]


@pytest.mark.parametrize("fmt", REFUSED_FORMATS)
def test_a_refused_format_is_recognised_without_running_its_parser(parsed, fmt):
    data = images.in_format(fmt) if fmt != "XBM" else _xbm()
    with pytest.raises(UnsupportedFormat) as info:
        decode_image(data)
    assert info.value.code == "unsupported_format" and info.value.http_status == 415
    assert fmt in str(info.value) or fmt == "DIB"  # DIB's magic is the BMP info header: named as Pillow names it
    assert not set(parsed) - {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"}, parsed


def _xbm() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("1", (16, 16), 1).save(buffer, "XBM")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [images.not_an_image(), b"\x00" * 64, b"GIF89a" + b"\x00" * 4, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30],
    ids=["text", "zeros", "broken_gif_header", "broken_png_header"],
)
def test_a_non_image_is_still_invalid_and_only_allowed_parsers_ran(parsed, data):
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert info.value.code == "invalid_image" and info.value.http_status == 400
    allowed = {"JPEG" if f == "MPO" else f for f in DEFAULT_FORMATS}
    assert set(parsed) <= allowed, parsed


@pytest.mark.parametrize("fmt", ["IM", "TGA"])
def test_formats_pillow_can_only_identify_by_parsing_are_refused_unparsed(parsed, fmt):
    """IM and TGA have no magic bytes Pillow checks: telling them from junk would take their
    parsers. They are refused all the same, as junk (IM) or by a look-alike's magic (this TGA
    starts like a CUR icon)."""
    with pytest.raises((InvalidImage, UnsupportedFormat)) as info:
        decode_image(images.in_format(fmt))
    assert 400 <= info.value.http_status < 500
    assert set(parsed) <= {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"}, parsed


def test_allowed_formats_open_with_their_own_parser_only(parsed):
    for data, fmt in [(images.small_jpeg(), "JPEG"), (images.in_mode("RGB"), "PNG"), (images.animated_gif(), "GIF")]:
        parsed.clear()
        decode_image(data)
        assert parsed == [fmt]


def test_multi_picture_jpegs_are_opened_by_the_jpeg_parser_and_still_accepted(parsed):
    out = decode_image(images.multi_picture_jpeg())
    assert out.shape == (20, 30, 3) and out[10, 10, 0] > 150 and parsed == ["JPEG"]
    assert decode_image(images.multi_picture_jpeg(), formats=frozenset({"MPO"})).shape == (20, 30, 3)
    with pytest.raises(UnsupportedFormat, match="'JPEG'"):  # a plain JPEG is not an MPO
        decode_image(images.small_jpeg(), formats=frozenset({"MPO"}))
    with pytest.raises(UnsupportedFormat, match="'MPO'"):
        decode_image(images.multi_picture_jpeg(), formats=frozenset({"JPEG"}))


def test_a_format_outside_a_narrowed_allow_list_is_not_parsed(parsed):
    loader = ImageLoader(ModelConfig(decode={"formats": ["JPEG"]}))
    with pytest.raises(UnsupportedFormat, match="'PNG'"):
        loader.load(images.in_mode("RGB"))
    assert "PNG" not in parsed
