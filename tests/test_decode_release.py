"""Decoding large images in several threads leaves no freed memory resident: the loader hands it
back to the system (glibc keeps each thread's freed blocks otherwise). Measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import io, json, os, threading
    import numpy as np
    from PIL import Image
    from shared import ImageLoader, ModelConfig

    def rss_mib():
        return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return buffer.getvalue()

    images = [
        png((np.arange(5000 * 4000, dtype=np.uint32) % 65535).astype(np.uint16).reshape(4000, 5000)),  # 16-bit, 20 MP
        png(np.full((4000, 5000, 4), 128, np.uint8)),  # RGBA, 20 MP
    ]
    loader = ImageLoader(ModelConfig())
    loader.load(images[0])  # libraries warm; what they keep for good is in the baseline
    before = rss_mib()
    threads = [threading.Thread(target=lambda: [loader.load(data) for data in images]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"before": before, "after": rss_mib()}))
""")


@pytest.mark.process
def test_large_images_decoded_in_threads_leave_no_freed_memory_resident():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    # each 20-megapixel decode frees ~60-120 MiB; four threads kept ~300 MiB of it resident before
    assert rss["after"] - rss["before"] < 80, rss
