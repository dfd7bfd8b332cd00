"""How many images one ingress replica works on at once: decoding, or awaiting its model.

Under overload a request that cannot be finished before the proxy's timeout should be refused at
once, not queued: otherwise the replica decodes images that then wait past the timeout (the proxy
answers 408) or meet a full model queue (503 after the decode was paid for), and useful throughput
collapses while latency climbs to the timeout. A request past the cap gets 503 ``overloaded``
(with Retry-After) before any of its images is decoded. One request is always admitted when none
is in progress, so a batch larger than the cap still runs alone.

All of it runs on the replica's event loop: a plain counter is enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import Overloaded


class Admission:
    def __init__(self, max_images: int):
        self.max_images = max_images
        self.images = 0  # in progress now

    @contextmanager
    def admit(self, images: int = 1) -> Iterator[None]:
        if self.images and self.images + images > self.max_images:
            raise Overloaded(
                f"this ingress replica is at capacity ({self.images} images in progress, at most "
                f"{self.max_images}); retry later"
            )
        self.images += images
        try:
            yield
        finally:
            self.images -= images
