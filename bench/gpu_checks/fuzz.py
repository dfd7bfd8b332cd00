"""Section ``fuzz`` (checklist step 8): bit-flipped JPEGs through nvJPEG.

Each file is a bench JPEG with a few bits flipped in its entropy-coded data only: its header
(every marker segment up to and including the first SOS) and its end-of-image marker are
intact, so ``encoded_if_device_decodable`` would send it to nvJPEG. Counted: nvJPEG errors vs
silent successes, against what Pillow (the CPU path) makes of the same bytes, and the batched,
bisecting ``decode_jpegs``. Then ``torch.cuda.synchronize()``, a small op and a clean decode
must still work: a sticky CUDA error would poison the context for every later batch.

It runs in a child process (``python -m bench.gpu_checks.fuzz --files DIR``), so a poisoned
context or a crash costs this section only; the child prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import time
from pathlib import Path

import numpy as np

from bench.gpu_checks.common import child_failure, run_child

FILES = 200


def entropy_span(data: bytes) -> tuple[int, int]:
    """[start, end) of the entropy-coded data: after the first SOS segment, before the final EOI."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        raise ValueError("not a JPEG that starts with SOI and ends with EOI")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"no marker at offset {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # SOS: its header is `length` bytes; the scan follows
            return i + 2 + length, len(data) - 2
        i += 2 + length
    raise ValueError("no SOS marker")


def bit_flipped(data: bytes, rng: np.random.Generator, flips: int) -> bytes:
    """``data`` with ``flips`` random bits flipped inside its entropy-coded data."""
    start, end = entropy_span(data)
    out = bytearray(data)
    for position in rng.integers(start, end, size=flips):
        out[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def fuzz_files(paths: list[Path], count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bases = [path.read_bytes() for path in paths]
    return [bit_flipped(bases[i % len(bases)], rng, int(rng.integers(1, 9))) for i in range(count)]


def run(ctx, report) -> None:
    ctx.images(1)  # generated if need be
    child = run_child(
        "bench.gpu_checks.fuzz", ["--files", str(ctx.data_dir), "--count", str(FILES)], timeout=ctx.child_timeout(300)
    )
    result = child["result"]
    if result is None:
        report.add("fuzz child process", child_failure(child), passed=False)
        report.details.update(rc=child["rc"], stderr_tail=child["stderr_tail"])
        return
    report.details.update(result)
    single = result["single"]
    report.add(
        f"nvJPEG on {result['files']} bit-flipped JPEGs, one at a time",
        f"{single['errors']} errors, {single['silent']} decoded without error",
    )
    report.add(
        "decoded by nvJPEG but rejected by Pillow / the reverse",
        f"{result['nvjpeg_only']} / {result['pillow_only']} (Pillow rejects {result['pillow_errors']} in all)",
    )
    batched = result["batched"]
    report.add(
        "decode_jpegs (batched, bisecting) on the same files",
        f"{batched['invalid']} InvalidImage, {batched['decoded']} decoded, in {batched['seconds']} s"
        if "error" not in batched
        else batched["error"],
        passed="error" not in batched,
    )
    report.add(
        "CUDA healthy afterwards (synchronize, small op, clean decode unchanged)",
        result["healthy"] or result["health_error"],
        passed=result["healthy"] is True,
    )


# ---- the child --------------------------------------------------------------------------------
def fuzz(files_dir: Path, count: int) -> dict:
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from shared.device_decode import Encoded, decode_jpegs
    from shared.runner import device_probe

    paths = sorted(files_dir.rglob("*.jpg"))[:20]
    clean = torch.frombuffer(bytearray(paths[0].read_bytes()), dtype=torch.uint8)
    before = decode_jpeg(clean, mode=ImageReadMode.RGB, device="cuda").cpu()
    files = fuzz_files(paths, count)
    single = {"errors": 0, "silent": 0}
    nvjpeg_only = pillow_only = pillow_errors = 0
    kinds: collections.Counter[str] = collections.Counter()
    for data in files:
        try:
            decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda")
            torch.cuda.synchronize()
            nvjpeg_ok = True
            single["silent"] += 1
        except Exception as exc:  # noqa: BLE001 - RuntimeError from torchvision, or a CUDA error
            nvjpeg_ok = False
            single["errors"] += 1
            kinds[str(exc).splitlines()[0][-80:] if str(exc) else "RuntimeError"] += 1
        try:
            Image.open(io.BytesIO(data)).load()
            pillow_ok = True
        except Exception:  # noqa: BLE001 - Pillow raises many types on corrupt data
            pillow_ok = False
            pillow_errors += 1
        nvjpeg_only += nvjpeg_ok and not pillow_ok
        pillow_only += pillow_ok and not nvjpeg_ok
    batched: dict = {}
    try:
        started = time.perf_counter()
        items = [Encoded(np.frombuffer(data, np.uint8), 1, (0, 0)) for data in files]
        out = decode_jpegs(items, torch.device("cuda"))
        torch.cuda.synchronize()
        invalid = sum(not isinstance(o, torch.Tensor) for o in out)
        batched = {
            "invalid": invalid,
            "decoded": len(out) - invalid,
            "seconds": round(time.perf_counter() - started, 2),
        }
    except Exception as exc:  # noqa: BLE001 - the figure reports it
        batched = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    healthy, health_error = True, None
    try:
        torch.cuda.synchronize()
        device_probe(torch.device("cuda"))
        after = decode_jpeg(clean, mode=ImageReadMode.RGB, device="cuda").cpu()
        if not torch.equal(before, after):
            healthy, health_error = False, "a clean JPEG decodes differently after the fuzz"
    except Exception as exc:  # noqa: BLE001 - this is the finding
        healthy, health_error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return {
        "files": len(files),
        "single": single,
        "nvjpeg_only": nvjpeg_only,
        "pillow_only": pillow_only,
        "pillow_errors": pillow_errors,
        "error_messages": dict(kinds.most_common(5)),
        "batched": batched,
        "healthy": healthy,
        "health_error": health_error,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=Path, required=True, help="a folder of baseline JPEGs (the bench dataset)")
    parser.add_argument("--count", type=int, default=FILES)
    args = parser.parse_args(argv)
    print(json.dumps(fuzz(args.files, args.count)), flush=True)


if __name__ == "__main__":
    main()
