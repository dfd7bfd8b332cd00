"""Give freed memory back to the system after a large image.

glibc's malloc keeps what a thread frees in that thread's arena for reuse. A decode thread that
handled one 40-megapixel image keeps its hundreds of megabytes resident afterwards, and every
decode thread can do that. ``malloc_trim`` returns the free parts of every arena. It costs a
millisecond or so, so only images this large pay for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

RELEASE_FROM_PIXELS = 16_000_000  # above a 12-megapixel phone photo


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
