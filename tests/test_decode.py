import numpy as np
import pytest

from shared.decode import decode_image
from shared.errors import EmptyInput, ImageTooLarge, InvalidImage, UnsupportedFormat
from tests import images


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb_uint8(mode):
    out = decode_image(images.in_mode(mode))
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3) and out.flags.c_contiguous


def test_16_bit_grey_keeps_its_range():
    out = decode_image(images.in_mode("I;16"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # scaled, not clipped to white
    assert (out[..., 0] == out[..., 1]).all()


def test_transparent_pixels_become_white():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buffer, "PNG")
    assert (decode_image(buffer.getvalue()) == 255).all()


def test_animated_gif_gives_first_frame():
    out = decode_image(images.animated_gif())
    assert out.shape == (10, 20, 3)
    assert tuple(out[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied():
    assert decode_image(images.jpeg_with_orientation(1)).shape == (20, 40, 3)
    assert decode_image(images.jpeg_with_orientation(6)).shape == (40, 20, 3)  # rotated 90 degrees


def test_jpeg_draft_decodes_smaller_but_not_below_target():
    from twinfer.samples import encode, sample_array

    full = encode(sample_array("chelsea"))  # 451 x 300
    out = decode_image(full, draft_size=100)
    assert min(out.shape[:2]) >= 100 and out.shape[1] < 451


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: b"", EmptyInput),
        (images.not_an_image, InvalidImage),
        (images.corrupt_jpeg, InvalidImage),
        (images.truncated_jpeg, InvalidImage),
        (images.pixel_bomb, ImageTooLarge),
        (images.unsupported_format, UnsupportedFormat),
    ],
    ids=["zero_bytes", "not_an_image", "corrupt", "truncated", "bomb", "unsupported_format"],
)
def test_bad_input_raises_typed_error(make, error):
    with pytest.raises(error) as info:
        decode_image(make(), max_pixels=1_000_000)
    assert info.value.code == error.code and str(info.value)


def test_bomb_is_refused_before_decoding():
    # 30000 x 30000 would need 2.7 GB decoded; the header check refuses it at once.
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(images.pixel_bomb(30_000, 30_000), max_pixels=40_000_000)


def test_format_allow_list_is_configurable():
    assert decode_image(images.unsupported_format(), formats=frozenset({"PPM"})).shape == (8, 8, 3)
    with pytest.raises(UnsupportedFormat):
        decode_image(images.in_mode("RGB"), formats=frozenset({"JPEG"}))


def test_extremely_thin_image_prepares_without_a_huge_intermediate():
    import io

    from PIL import Image

    from shared.prepare import PreprocessSpec, prepare_image

    buffer = io.BytesIO()
    Image.new("RGB", (100_000, 1), (9, 9, 9)).save(buffer, "PNG")
    image = decode_image(buffer.getvalue())
    prepared = prepare_image(image, PreprocessSpec("resize_crop", 224, resize=256))
    assert prepared.pixels.shape == (3, 224, 224) and prepared.original_size == (1, 100_000)
    assert (prepared.pixels == 9).all()


def test_resize_crop_is_torchvisions_resize_then_centre_crop():
    import torch
    import torchvision.transforms.v2.functional as F

    from shared.prepare import PreprocessSpec, prepare_image
    from tests.images import small_photo

    image = small_photo("coffee", size=400)
    ours = prepare_image(image, PreprocessSpec("resize_crop", 224, resize=256)).pixels.astype(int)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    reference = F.center_crop(F.resize(chw, 256, antialias=True), 224).numpy().astype(int)
    assert (ours == reference).all()  # ordinary photos take exactly the reference path


def test_multi_picture_jpeg_is_accepted():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    frames = [Image.new("RGB", (30, 20), (200, 10, 10)), Image.new("RGB", (30, 20), (10, 10, 200))]
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue())
    assert out.shape == (20, 30, 3) and out[10, 10, 0] > 150  # the first picture


def test_resize_exact_squashes_to_the_square_torchvision_makes():
    import torch
    import torchvision.transforms.v2.functional as F

    from shared.prepare import PreprocessSpec, prepare_image
    from tests.images import small_photo

    image = small_photo("rocket", size=300)[:, :200]  # 300 x 200, not square
    ours = prepare_image(image, PreprocessSpec("resize_exact", 224)).pixels
    reference = F.resize(torch.from_numpy(image).permute(2, 0, 1), [224, 224], antialias=True).numpy()
    assert ours.shape == (3, 224, 224) and (ours == reference).all()


def test_max_side_keeps_the_aspect_and_never_upscales():
    import torch
    import torchvision.transforms.v2.functional as F

    from shared.prepare import PreprocessSpec, prepare_image
    from tests.images import small_photo

    image = small_photo("astronaut", size=300)[:150]  # 150 high x 300 wide
    big = prepare_image(image, PreprocessSpec("max_side", 200))
    reference = F.resize(torch.from_numpy(image).permute(2, 0, 1), [100, 200], antialias=True).numpy()
    assert big.pixels.shape == (3, 100, 200) and (big.pixels == reference).all()
    assert big.original_size == (150, 300)
    small = prepare_image(image, PreprocessSpec("max_side", 800))
    assert (small.pixels == image.transpose(2, 0, 1)).all()  # already inside the limit: untouched


def _whole_image_reference(data: bytes) -> np.ndarray:
    """The straightforward conversion, whole-image and in float64: what ``decode_image`` must
    equal (within 1 for float images), however it gets there."""
    import io

    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(data))
    image.load()
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _in_mode_with_orientation(mode: str, orientation: int, size=(23, 17)) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(len(mode) * 10 + orientation)
    w, h = size
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    if mode in ("I", "F", "I;16"):
        wide = rng.integers(0, 65536, (h, w)).astype(np.int32)
        values = {"I;16": wide.astype(np.uint16), "I": wide, "F": wide.astype(np.float32) / 65535}[mode]
        image = Image.fromarray(values, mode if mode != "I;16" else None)
        image.save(buffer, "TIFF", exif=exif)
    elif mode == "I-small":  # 32-bit values all within 0-255: taken as they are
        Image.fromarray(rgba[:, :, 0].astype(np.int32), "I").save(buffer, "TIFF", exif=exif)
    elif mode == "P-transparent":
        Image.fromarray(rgba[:, :, 0] // 8, "P").save(buffer, "PNG", transparency=3, exif=exif)
    elif mode == "CMYK":
        Image.fromarray(rgba, "CMYK").save(buffer, "TIFF", exif=exif)
    elif mode == "P":  # no transparent entry
        Image.fromarray(rgba[:, :, :3]).convert("P").save(buffer, "PNG", exif=exif)
    else:
        Image.fromarray(rgba, "RGBA").convert(mode).save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    "mode", ["RGB", "L", "LA", "RGBA", "P", "P-transparent", "1", "I;16", "I", "I-small", "F", "CMYK"]
)
def test_block_conversion_equals_the_whole_image_conversion(monkeypatch, mode, orientation):
    import shared.decode

    monkeypatch.setattr(shared.decode, "BLOCK_PIXELS", 23 * 5)  # 5-row blocks, the last one short
    data = _in_mode_with_orientation(mode, orientation)
    out, expected = decode_image(data), _whole_image_reference(data)
    assert out.shape == expected.shape == ((23, 17, 3) if orientation >= 5 else (17, 23, 3))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
    tolerance = 1 if mode == "F" else 0  # float32 blocks against float64: a rounding apart at most
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= tolerance
