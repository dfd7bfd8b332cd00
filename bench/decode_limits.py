"""Decode limits, measured: what a hostile file would cost unchecked, and what twinfer spends on it.

    python -m bench.decode_limits [--out bench/out/decode-limits.json]

- **scan bomb**: a grayscale 6000 x 6000 progressive JPEG whose last scan repeats to 200 scans
  (~150 KB). CPU seconds for Pillow to decode it with no checks, and for ``decode_image`` (the
  product's defaults) to refuse it.
- **the default budget**: a scan bomb with as many scans as ``max_jpeg_scan_pixels`` lets through
  (the most decode work a file may cost), and a real-looking 39 Mpx progressive photo.
- **20 MiB bodies**: CPU seconds for ``decode_image`` to decide on a 20 MiB scan bomb and on a
  20 MiB JPEG padded with one long run of filler after its image (the byte cap is 20 MiB: these are
  the largest bodies that reach the decoder).
- **colour conversion memory**: a 16-bit grayscale 6300 x 6300 PNG and an RGBA 6000 x 6000 PNG,
  each decoded by ``decode_image`` in a fresh process. Peak resident memory above the start, and
  that peak less the decoded image Pillow holds, against the final RGB uint8 buffer.

Prints a table; the last line is the JSON of every figure (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.malformed import png_16bit, png_rgba, scan_bomb
from bench.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20

# the child: decode once to load codecs, then reset the peak and decode again
CHILD = r"""
import ctypes, gc, json, sys
from shared.decode import decode_image
libc = ctypes.CDLL("libc.so.6")

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

data = open(sys.argv[1], "rb").read()
decode_image(data)
gc.collect(); libc.malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = peak_kib()
out = decode_image(data)
print(json.dumps({"extra": (peak_kib() - before) * 1024, "final": out.nbytes}))
"""


def cpu_seconds(work) -> tuple[float, str]:
    """CPU time of ``work()`` in this process, and how it ended (``ok`` or the error's code)."""
    start = time.process_time()
    try:
        work()
        outcome = "ok"
    except Exception as error:  # noqa: BLE001 - the outcome is the figure
        outcome = getattr(error, "code", type(error).__name__)
    return time.process_time() - start, outcome


def padded_jpeg(size: int) -> bytes:
    """A small valid JPEG followed by filler to ``size`` bytes (bytes after EOI are never decoded)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data + b"\x00" * (size - len(data))


def progressive_photo(width: int, height: int) -> bytes:
    """scikit-image's astronaut, resized to ``width`` x ``height``: a photo's texture, progressive."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    photo = Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    photo.save(buffer, "JPEG", quality=90, progressive=True)
    return buffer.getvalue()


def bomb_of_size(size: int) -> bytes:
    """A scan bomb of about ``size`` bytes (more repeats of its last scan)."""
    small = scan_bomb(1024, 1024, 200)
    per_scan = (len(small) - len(scan_bomb(1024, 1024, 100))) / 100
    return scan_bomb(1024, 1024, 200 + int((size - len(small)) / per_scan))


def memory(data: bytes, tmp: Path, name: str) -> dict:
    path = tmp / name
    path.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "0"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env, timeout=600, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/out/decode-limits.json")
    args = parser.parse_args()

    from PIL import Image

    from shared.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, JPEG_SCANS_AT_MAX_PIXELS, decode_image

    rows = []
    bomb = scan_bomb(6000, 6000, 200)
    unchecked, _ = cpu_seconds(lambda: Image.open(io.BytesIO(bomb)).load())
    checked, outcome = cpu_seconds(lambda: decode_image(bomb))
    rows.append(
        {
            "input": f"scan bomb 6000x6000, 200 scans, {len(bomb) // 1024} KB",
            "unchecked_cpu_s": round(unchecked, 3),
            "twinfer_cpu_s": round(checked, 4),
            "twinfer": outcome,
        }
    )
    # the most work the default budget lets through, and a real photo at the pixel cap
    budget = JPEG_SCANS_AT_MAX_PIXELS * DEFAULT_MAX_PIXELS
    at_budget = scan_bomb(6000, 6000, budget // (6000 * 6000))
    for name, body in (
        (f"scan bomb 6000x6000, {budget // (6000 * 6000)} scans (at the default budget)", at_budget),
        ("progressive photo 7300x5400", progressive_photo(7300, 5400)),
    ):
        seconds, outcome = cpu_seconds(lambda body=body: decode_image(body))
        rows.append(
            {"input": f"{name}, {len(body) // 1024} KB", "twinfer_cpu_s": round(seconds, 3), "twinfer": outcome}
        )
    for name, body in (
        ("scan bomb", bomb_of_size(DEFAULT_MAX_BYTES - 2 * 65536)),
        ("padded JPEG", padded_jpeg(DEFAULT_MAX_BYTES)),
    ):
        seconds, outcome = cpu_seconds(lambda body=body: decode_image(body))
        rows.append(
            {"input": f"{name}, {len(body) / MIB:.1f} MiB", "twinfer_cpu_s": round(seconds, 4), "twinfer": outcome}
        )

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"twinfer-decode-limits-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    memory_rows = []
    for name, data, held in (("16-bit PNG 6300x6300", png_16bit(), 2), ("RGBA PNG 6000x6000", png_rgba(), 4)):
        result = memory(data, tmp, name.split()[0])
        final = result["final"]
        decoded = final // 3 * held  # what Pillow holds for the decoded image: 2 or 4 bytes a pixel
        memory_rows.append(
            {
                "input": f"{name}, {len(data) // 1024} KB",
                "extra_peak_mib": round(result["extra"] / MIB),
                "decoded_mib": round(decoded / MIB),
                "final_rgb_mib": round(final / MIB),
                "conversion_over_final": round((result["extra"] - decoded) / final, 2),
            }
        )
        (tmp / name.split()[0]).unlink()
    tmp.rmdir()

    print(f"{'input':<64}{'unchecked CPU s':>16}{'twinfer CPU s':>15}  twinfer")
    for row in rows:
        print(f"{row['input']:<64}{row.get('unchecked_cpu_s', '-'):>16}{row['twinfer_cpu_s']:>15}  {row['twinfer']}")
    print(f"\n{'input':<34}{'extra peak MiB':>15}{'decoded MiB':>12}{'final RGB MiB':>14}{'conversion/final':>17}")
    for row in memory_rows:
        print(
            f"{row['input']:<34}{row['extra_peak_mib']:>15}{row['decoded_mib']:>12}{row['final_rgb_mib']:>14}"
            f"{row['conversion_over_final']:>17}"
        )
    result = {
        **provenance("bench.decode_limits"),
        "cpu": rows,
        "memory": memory_rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
