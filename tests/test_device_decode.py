"""decode.on_device: JPEGs checked on the CPU, decoded in batches by the model process.

No GPU here, so the device half runs torchvision's decoder on the CPU (libjpeg-turbo, the same
library Pillow uses): that makes the device path's pixels comparable bit for bit with the CPU
path's, which is what these tests hold it to. On CUDA the same code calls nvJPEG.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageOps
from pydantic import ValidationError

from batch.decode_stage import DECODED_SCHEMA, decode_batch
from batch.predict_actor import Predictor
from batch.uris import parse_uri
from shared import ImageLoader, ModelConfig, device_decode
from shared.device_decode import Encoded, decode_jpegs, orient, pixel_budget_chunks
from shared.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from shared.prepare import Prepared
from tests import images
from tests.images import encode, sample_array

# the loader's side of on_device needs no GPU; only a model process on CUDA would
ON_DEVICE = ModelConfig(device="cuda", decode={"on_device": True})
NO_DRAFT = ModelConfig(decode={"draft": False})  # the CPU path at full resolution, as the device decodes


def bogus_huffman_jpeg() -> bytes:
    """A JPEG whose header reads fine and whose Huffman table no decoder accepts."""
    data = bytearray(images.small_jpeg("coffee"))
    table = data.index(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16
    return bytes(data)


def oriented_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(images.small_photo("rocket", 64)[:, :40]).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_on_device_needs_a_cuda_classification_model():
    for bad in (
        {},
        {"device": "cpu"},
        {"device": "auto"},
        {"device": "cuda", "name": "fasterrcnn_v2", "weights": "random"},
    ):
        with pytest.raises(ValidationError, match="on_device"):
            ModelConfig.model_validate({**bad, "decode": {"on_device": True}})


def test_loader_leaves_plain_jpegs_encoded_and_decodes_the_rest_on_cpu():
    loader = ImageLoader(ON_DEVICE)
    jpeg = images.small_jpeg("coffee")
    item = loader.load(jpeg)
    assert isinstance(item, Encoded) and item.data.tobytes() == jpeg and item.orientation == 1
    width, height = Image.open(io.BytesIO(jpeg)).size
    assert item.original_size == (height, width)
    gray = encode(sample_array("camera")[:50, :70], "JPEG")
    assert isinstance(loader.load(gray), Encoded)
    cmyk = io.BytesIO()
    Image.fromarray(images.small_photo()).convert("CMYK").save(cmyk, "JPEG")
    png = encode(sample_array("coffee")[:40, :60], "PNG")
    trailing = jpeg + b"appended data"
    for data in (cmyk.getvalue(), png, trailing):  # the CPU path: decoded and prepared here
        prepared = loader.load(data)
        assert isinstance(prepared, Prepared) and prepared.pixels.shape == (3, 224, 224)
    with pytest.raises(InvalidImage):  # truncated: no end marker, so the CPU path, which rejects it
        loader.load(images.truncated_jpeg())


def test_loader_header_checks_still_apply_before_anything_is_left_encoded():
    small_cap = ImageLoader(ModelConfig(device="cuda", decode={"on_device": True, "max_pixels": 1000}))
    with pytest.raises(ImageTooLarge):
        small_cap.load(images.small_jpeg())
    png_only = ImageLoader(ModelConfig(device="cuda", decode={"on_device": True, "formats": ["PNG"]}))
    with pytest.raises(UnsupportedFormat):
        png_only.load(images.small_jpeg())
    with pytest.raises(InvalidImage):
        ImageLoader(ON_DEVICE).load(images.not_an_image())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(orientation):
    data = oriented_jpeg(orientation)
    item = ImageLoader(ON_DEVICE).load(data)
    assert isinstance(item, Encoded) and item.orientation == orientation
    (decoded,) = decode_jpegs([item], torch.device("cpu"))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert decoded.shape[1:] == expected.shape[:2] == item.original_size
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), expected)


def test_an_out_of_range_orientation_is_ignored_as_pillow_ignores_it():
    data = oriented_jpeg(9)
    item = ImageLoader(ON_DEVICE).load(data)
    assert isinstance(item, Encoded) and item.orientation == 1
    (decoded,) = decode_jpegs([item], torch.device("cpu"))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), expected)
    chw = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    assert torch.equal(orient(chw, 9), chw)


def test_device_path_gives_the_cpu_paths_pixels_and_predictions(embedded_wrapper):
    """Same decoder library, same prepare code: identical crops, identical answers."""
    cpu_loader = ImageLoader(NO_DRAFT)
    datas = [encode(sample_array(name)) for name in ("chelsea", "coffee", "rocket")]
    encoded = [ImageLoader(ON_DEVICE).load(data) for data in datas]
    ready = embedded_wrapper.decode_on_device(encoded)
    for data, item in zip(datas, ready):
        expected = cpu_loader.load(data)
        assert isinstance(item, Prepared) and item.original_size == expected.original_size
        assert item.pixels.dtype == torch.uint8 and np.array_equal(item.pixels.numpy(), expected.pixels)
    via_device = embedded_wrapper.predict_batch(encoded, [{"top_k": 3}] * 3)
    via_cpu = embedded_wrapper.predict_batch([cpu_loader.load(d) for d in datas], [{"top_k": 3}] * 3)
    assert via_device == via_cpu
    assert [r[0]["label"] for r in via_device] == ["Egyptian cat", "espresso", "missile"]


def test_one_undecodable_jpeg_fails_alone_and_a_rejected_one_falls_back_to_cpu(embedded_wrapper):
    loader = ImageLoader(ON_DEVICE)
    good, png = encode(sample_array("coffee")), encode(sample_array("rocket"), "PNG")
    # a file the device decoder rejects but the CPU path reads (the loader would never leave a
    # PNG encoded; nvJPEG's real rejects - arithmetic-coded, 12-bit JPEGs - are rare and hard to make)
    rejected = Encoded(np.frombuffer(png, np.uint8), 1, (512, 512))
    items = [loader.load(good), loader.load(bogus_huffman_jpeg()), rejected, loader.load(good)]
    assert isinstance(items[1], Encoded)  # it passed the header checks
    results = embedded_wrapper.predict_batch(items, [{"top_k": 1}] * 4)
    assert isinstance(results[1], InvalidImage) and "corrupt" in str(results[1])
    alone = embedded_wrapper.predict_batch([items[0]], [{"top_k": 1}])[0]
    assert same_top1(results[0], alone) and same_top1(results[3], alone) and alone[0]["label"] == "espresso"
    assert results[2][0]["label"] == "missile"


def same_top1(a: list[dict], b: list[dict]) -> bool:
    """Equal up to float noise between batch sizes (eager kernels block differently)."""
    return a[0]["index"] == b[0]["index"] and a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-5)


def test_backfill_rows_carry_jpegs_encoded_and_the_actor_decodes_them(embedded_wrapper):
    files = {
        "a/coffee.jpg": encode(sample_array("coffee")),
        "a/broken.jpg": bogus_huffman_jpeg(),
        "b/rocket.png": encode(sample_array("rocket"), "PNG"),
        "b/text.jpg": images.not_an_image(),
    }
    table = pa.table({"bytes": list(files.values()), "path": [f"/data/{name}" for name in files]})
    decoded = decode_batch(table, model=ON_DEVICE, input_location=parse_uri("/data"))
    assert decoded.schema == DECODED_SCHEMA
    rows = {row["path"]: row for row in decoded.to_pylist()}
    coffee = rows["/data/a/coffee.jpg"]
    assert coffee["encoding"] == "jpeg" and coffee["pixels"] == files["a/coffee.jpg"] and coffee["shape"] is None
    assert rows["/data/b/rocket.png"]["encoding"] == "uint8_chw" and rows["/data/b/rocket.png"]["shape"] == [
        3,
        224,
        224,
    ]
    assert rows["/data/b/text.jpg"]["error"] == "invalid_image" and rows["/data/b/text.jpg"]["encoding"] is None

    # the actor of a CPU model reads both encodings (a real run pairs on_device with CUDA)
    predictor = Predictor(ModelConfig(), top_k=1, batch_size=2)
    out = {row["path"]: row for row in predictor(decoded).to_pylist()}
    assert out["/data/a/coffee.jpg"]["top_labels"] == ["espresso"] and out["/data/a/coffee.jpg"]["error"] is None
    assert out["/data/b/rocket.png"]["top_labels"] == ["missile"]
    assert out["/data/a/broken.jpg"]["error"] == "invalid_image" and out["/data/a/broken.jpg"]["top_labels"] is None
    assert "corrupt" in out["/data/a/broken.jpg"]["error_message"]
    assert out["/data/b/text.jpg"]["error"] == "invalid_image"


def test_a_non_integer_exif_orientation_is_left_to_the_cpu_path():
    """A RATIONAL orientation tag (Pillow reads it as 6.0 and rotates): the CPU path's business."""
    tiff = b"II*\x00" + struct.pack("<IHHHIII", 8, 1, 0x0112, 5, 1, 26, 0) + struct.pack("<II", 6, 1)
    segment = b"Exif\x00\x00" + tiff
    plain = images.small_jpeg("rocket")
    data = plain[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + plain[2:]
    item = ImageLoader(ON_DEVICE).load(data)
    expected = ImageLoader(ModelConfig()).load(data)
    assert isinstance(item, Prepared) and np.array_equal(item.pixels, expected.pixels)
    assert item.original_size == expected.original_size == Image.open(io.BytesIO(data)).size  # rotated: (w, h) swapped


def test_pixel_budget_chunks_keep_order_and_bound_each_decode():
    def sized(height, width):
        return Encoded(np.zeros(1, np.uint8), 1, (height, width))

    items = [sized(100, 100), sized(100, 100), sized(300, 300), sized(10, 10), sized(100, 100)]
    assert pixel_budget_chunks(items, 25_000) == [[0, 1], [2], [3, 4]]  # the 90 000-pixel image alone
    assert pixel_budget_chunks(items, 10**9) == [[0, 1, 2, 3, 4]]
    assert pixel_budget_chunks([], 10) == []


def test_decoding_in_pixel_budgeted_chunks_changes_nothing(embedded_wrapper, monkeypatch):
    loader = ImageLoader(ON_DEVICE)
    items = [loader.load(encode(sample_array(name))) for name in ("chelsea", "coffee", "rocket", "astronaut")]
    whole = embedded_wrapper.decode_on_device(items)
    monkeypatch.setattr(device_decode, "MAX_PIXELS_PER_DECODE", 200_000)  # ~one photo per decode call
    calls: list[tuple[int, int]] = []  # (images, full-size pixels) per decode call

    def counting(chunk, device):
        calls.append((len(chunk), sum(item.original_size[0] * item.original_size[1] for item in chunk)))
        return decode_jpegs(chunk, device)

    monkeypatch.setattr(device_decode, "decode_jpegs", counting)
    chunked = embedded_wrapper.decode_on_device(items)
    assert len(calls) >= 3  # the wrapper really decoded in several calls
    assert all(pixels <= 200_000 or images == 1 for images, pixels in calls)  # under budget, or one big photo alone
    assert sum(images for images, _ in calls) == len(items)
    assert all(torch.equal(a.pixels, b.pixels) and a.original_size == b.original_size for a, b in zip(whole, chunked))


def test_an_image_the_device_cannot_resize_goes_the_cpu_path_alone(embedded_wrapper, monkeypatch):
    real = device_decode.prepare_tensor
    calls = []

    def out_of_memory_once(chw, spec):
        calls.append(chw.shape)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(chw, spec)

    monkeypatch.setattr(device_decode, "prepare_tensor", out_of_memory_once)
    datas = [encode(sample_array(name)) for name in ("chelsea", "coffee")]
    loader = ImageLoader(ON_DEVICE)
    ready = embedded_wrapper.decode_on_device([loader.load(data) for data in datas])
    cpu_path = ImageLoader(ModelConfig()).load(datas[0])  # with draft, as the wrapper's own CPU path
    assert isinstance(ready[0].pixels, np.ndarray) and np.array_equal(ready[0].pixels, cpu_path.pixels)
    assert isinstance(ready[1].pixels, torch.Tensor)  # its neighbour stayed on the device path


def test_the_cuda_stream_is_drained_before_every_nvjpeg_call(monkeypatch):
    """nvJPEG does not wait for queued kernels (pytorch/vision#9606): every decode call, the
    batched one and each one-at-a-time retry, must come after a stream synchronize."""
    import torchvision.io

    real_decode = torchvision.io.decode_jpeg
    events: list[str] = []

    class Stream:
        def synchronize(self):
            events.append("drain")

    def fake_decode(inputs, mode, device):
        batched = isinstance(inputs, list)
        events.append("decode batch" if batched else "decode one")
        assert device.type == "cuda"
        if batched:  # one corrupt image fails the batched call: the code retries each alone
            raise RuntimeError("decode_jpeg, x.cpp:1, simulated batch failure")
        return real_decode(inputs, mode=mode, device="cpu")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", fake_decode)
    loader = ImageLoader(ON_DEVICE)
    items = [loader.load(encode(sample_array(name))) for name in ("chelsea", "coffee")]
    decoded = decode_jpegs(items, torch.device("cuda"))
    assert events == ["drain", "decode batch", "drain", "decode one", "drain", "decode one"]
    assert all(isinstance(d, torch.Tensor) and d.shape[0] == 3 for d in decoded)


def test_cuda_batches_hold_the_process_lock_from_decode_to_the_end_of_the_forward_pass(embedded_wrapper, monkeypatch):
    """No other thread may queue device work (or free memory still in use) between a drain and
    an nvJPEG call: a CUDA batch with JPEGs to decode takes the lock, and once a model in the
    process decodes on the device, so does every CUDA batch, even one decoded on the CPU."""
    import copy
    import threading

    from shared.device_decode import CUDA_DECODE_LOCK, DeviceDecoder

    monkeypatch.setattr(device_decode, "DECODING_ON_DEVICE", threading.Event())  # a fresh process's state
    held: dict[str, list[bool]] = {"decode": [], "predict": []}
    on_cuda = copy.copy(embedded_wrapper)
    on_cuda.decoder = DeviceDecoder(  # only the lock choice and the decoder see CUDA; the model runs on the CPU
        torch.device("cuda"), embedded_wrapper.spec.preprocess, embedded_wrapper.loader.decode_and_prepare, False
    )

    def decode_on_cpu(chunk, device):
        held["decode"].append(CUDA_DECODE_LOCK.locked())
        return decode_jpegs(chunk, torch.device("cpu"))

    def predict_on_cpu(items, params):
        held["predict"].append(CUDA_DECODE_LOCK.locked())
        return embedded_wrapper.predict_reduced(items, params)

    monkeypatch.setattr(device_decode, "decode_jpegs", decode_on_cpu)
    monkeypatch.setattr(on_cuda, "predict_reduced", predict_on_cpu)
    data = encode(sample_array("coffee"))
    results = on_cuda.predict_batch([ImageLoader(ON_DEVICE).load(data)])
    assert held == {"decode": [True], "predict": [True]} and not CUDA_DECODE_LOCK.locked()
    assert results[0][0]["label"] == embedded_wrapper.classify_bytes(data)[0]["label"] == "espresso"

    decoded_on_cpu = [embedded_wrapper.load(data)]
    held["predict"].clear()
    on_cuda.predict_batch(decoded_on_cpu)  # no device decoder in this process yet: no lock needed
    device_decode.DECODING_ON_DEVICE.set()  # as a ModelWrapper with decode.on_device on CUDA does
    on_cuda.predict_batch(decoded_on_cpu)  # now its neighbours' nvJPEG calls could race it
    assert held["predict"] == [False, True] and not CUDA_DECODE_LOCK.locked()


def test_the_ingress_answers_a_jpeg_no_decoder_could_read_with_its_own_400():
    """Without HTTP: the ingress leaves JPEGs encoded, the model server (on the CPU here) finds one
    no decoder can read, and that request alone is answered 400; the other gets its answer.
    (Batch neighbours surviving such an image: ``test_one_undecodable_jpeg_fails_alone...``.)"""
    from starlette.testclient import TestClient

    from deployments.config import IngressConfig
    from deployments.ingress import http_app
    from deployments.model_server import ModelServer
    from deployments.service import InferenceService

    server = ModelServer({"name": "efficientnet_lite0"}, max_ongoing_requests=8)

    class Handle:  # a DeploymentHandle call, minus the hop and the @serve.batch queue (needs a replica)
        class infer:
            @staticmethod
            async def remote(items, params):
                assert all(isinstance(item, Encoded) for item in items)  # JPEGs left for the model process
                return server.run_batch(items, [params] * len(items))

    model = "efficientnet_lite0"
    service = InferenceService({model: Handle()}, {model: {"model": ON_DEVICE.model_dump()}}, IngressConfig())
    client = TestClient(http_app(service))

    def post(body: bytes):
        response = client.post(
            f"/v1/models/{model}/classify", params={"top_k": 1}, content=body, headers={"content-type": "image/jpeg"}
        )
        return response.status_code, response.json()

    bad_status, bad = post(bogus_huffman_jpeg())
    assert bad_status == 400 and bad["error"]["code"] == "invalid_image" and "corrupt" in bad["error"]["message"]
    good_status, good = post(images.small_jpeg("coffee"))
    assert good_status == 200 and good["predictions"][0]["label"] == "espresso"
