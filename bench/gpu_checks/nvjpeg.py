"""Section ``nvjpeg`` (checklist step 6): nvJPEG by JPEG kind. The bench photos are re-saved by
Pillow as baseline, progressive and grayscale JPEGs. For each kind:

- raw ``torchvision.io.decode_jpeg(device="cuda")`` in batches of 64: ms per batch and the
  process CPU time it costs (nvJPEG's hybrid path decodes Huffman data on the host);
- the CPU path's ``load`` (Pillow decode + resize), ms per image on one thread;
- ``prepare_tensor`` (resize and crop) on the device, ms per image;
- routing: how many ``load`` leaves ``Encoded`` with ``decode.on_device`` (progressive and
  grayscale go to the CPU workers, ``encoded_if_device_decodable``; the raw figures show why);
- ``predict_batch`` ms per batch and top-1 agreement, decode.on_device vs CPU decode (same fp16 model).
"""

from __future__ import annotations

import io
import statistics
import time

from bench.gpu_checks.common import agreement, top1

KINDS = ("baseline", "progressive", "grayscale")
BATCH = 64
AGREEMENT_MIN = 0.99


def resave(data: bytes, kind: str) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "grayscale":
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, progressive=kind == "progressive")
    return buffer.getvalue()


def run(ctx, report) -> None:
    from shared import ModelConfig, ModelWrapper
    from shared.device_decode import Encoded

    originals = [path.read_bytes() for path in ctx.images(ctx.pick(256, 8))]
    on_device = ModelWrapper(ModelConfig(device="cuda", decode={"on_device": True}), batch_sizes=(BATCH,))
    cpu_decode = ModelWrapper(ModelConfig(device="cuda"), batch_sizes=(BATCH,))
    for kind in KINDS:
        files = [resave(data, kind) for data in originals]
        figures = {
            "raw": raw_decode(files),
            "cpu_load_ms": cpu_load_ms(cpu_decode, files),
            "prepare_ms": prepare_ms(files, cpu_decode.spec.preprocess),
        }
        device_items = [on_device.load(data) for data in files]
        cpu_items = [cpu_decode.load(data) for data in files]
        encoded = sum(isinstance(item, Encoded) for item in device_items)
        figures["predict_ms"] = {
            "on_device": batch_ms(on_device, device_items),
            "cpu_decode": batch_ms(cpu_decode, cpu_items),
        }
        same, total, fraction = agreement(top1(on_device, device_items, BATCH), top1(cpu_decode, cpu_items, BATCH))
        figures["agreement"] = {"same": same, "total": total}
        report.details[kind] = figures
        raw = figures["raw"]
        report.add(
            f"{kind}: raw nvJPEG, batch {BATCH}",
            f"{raw['ms_per_batch']} ms/batch, {raw['cpu_s_per_batch']} s CPU/batch, {raw['img_s']} img/s"
            if "error" not in raw
            else raw["error"],
        )
        report.add(
            f"{kind}: CPU load / device prepare_tensor",
            f"{figures['cpu_load_ms']} / {figures['prepare_ms']} ms per image",
        )
        report.add(f"{kind}: left Encoded by load (decode.on_device)", f"{encoded}/{len(files)}")
        report.add(
            f"{kind}: predict_batch ms, on_device vs CPU decode",
            f"{figures['predict_ms']['on_device']} vs {figures['predict_ms']['cpu_decode']} ms per batch of {BATCH}",
        )
        report.add(
            f"{kind}: top-1, on_device vs CPU decode",
            f"{same}/{total} ({fraction:.2%})",
            passed=fraction >= AGREEMENT_MIN,
            threshold=f">= {AGREEMENT_MIN:.0%}",
        )


def raw_decode(files: list[bytes]) -> dict:
    """``decode_jpeg(list, device="cuda")`` over ``files`` in batches: medians per batch."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    batches = [tensors[i : i + BATCH] for i in range(0, len(tensors), BATCH)]
    try:
        decode_jpeg(batches[0], mode=ImageReadMode.RGB, device="cuda")  # warm
        walls, cpus = [], []
        for batch in batches:
            torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            decode_jpeg(batch, mode=ImageReadMode.RGB, device="cuda")
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    except RuntimeError as exc:
        return {"error": f"RuntimeError: {str(exc).splitlines()[0]}"}
    return {
        "ms_per_batch": round(statistics.median(walls) * 1000, 2),
        "cpu_s_per_batch": round(statistics.median(cpus), 3),
        "img_s": round(len(files) / sum(walls), 1),
    }


def cpu_load_ms(loader, files: list[bytes]) -> float:
    """The CPU half's ``load`` (decode, resize, crop), ms per image on one thread."""
    started = time.perf_counter()
    for data in files:
        loader.load(data)
    return round((time.perf_counter() - started) * 1000 / max(1, len(files)), 2)


def prepare_ms(files: list[bytes], spec) -> float:
    """``prepare_tensor`` on images nvJPEG decoded: ms per image, waited for."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from shared.prepare import prepare_tensor

    decoded = [
        decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda")
        for data in files[:BATCH]
    ]
    prepare_tensor(decoded[0], spec)  # warm
    torch.cuda.synchronize()
    started = time.perf_counter()
    for image in decoded:
        prepare_tensor(image, spec)
    torch.cuda.synchronize()
    return round((time.perf_counter() - started) * 1000 / len(decoded), 3)


def batch_ms(wrapper, items: list) -> float:
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    wrapper.predict_batch(batches[0])  # warm
    started = time.perf_counter()
    for batch in batches:
        wrapper.predict_batch(batch)
    return round((time.perf_counter() - started) * 1000 / len(batches), 2)
