"""What one ingress replica takes on: request bodies by bytes, then images by count and by how long
they would wait. Every protocol asks here before it reads, parses or decodes anything.

Under overload a request that cannot be answered in good time should be refused at once, not
queued: otherwise the replica reads bodies and decodes images that then wait past the proxy's
timeout (408) or meet a full model queue, and useful throughput collapses while latency climbs
to the timeout. Three budgets, each refused with 503 ``overloaded`` (``Retry-After``):

- **bytes**: request bodies held in memory (read, being read, or inflated), reserved from the
  declared length before the first byte is read, and as a body without one arrives;
- **images**: images in progress (decoding, or awaiting the model);
- **wait**: images already in progress, at the rate this replica has been answering them, would
  keep a new request waiting longer than ``max_wait_s`` before its own turn comes.

One request is always admitted when no image is in progress, whatever its size: a request the
limits allow is answered on an idle server. The rate is measured, not configured: images answered
per second of time the replica had work (``ServiceRate``), so an idle spell does not lower it.

All of it runs on the replica's event loop: plain counters are enough.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.errors import Overloaded

RATE_TIME_CONSTANT_S = 10.0  # the rate forgets what happened this long ago by a factor e
RATE_MIN_IMAGES = 8  # ... and says nothing until it has (weighted) this many answers to go by


class ServiceRate:
    """Images answered per second of busy time, exponentially weighted (``RATE_TIME_CONSTANT_S``).

    Busy time is time with at least one image in progress. Dividing by it rather than by wall
    time measures what the replica can do, not what it was asked to do: one request a minute
    that takes 50 ms says 20 images/s, not 1/60."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.answered = 0.0  # decayed image count
        self.busy_s = 0.0  # decayed busy time
        self._last = clock()
        self._busy = False

    def _advance(self) -> None:
        now = self.clock()
        elapsed = max(now - self._last, 0.0)
        decay = math.exp(-elapsed / RATE_TIME_CONSTANT_S)
        self.answered *= decay
        # busy for the whole interval: its decayed integral, so a long busy spell weighs as it should
        self.busy_s = self.busy_s * decay + (RATE_TIME_CONSTANT_S * (1 - decay) if self._busy else 0.0)
        self._last = now

    def set_busy(self, busy: bool) -> None:
        self._advance()
        self._busy = busy

    def add(self, images: int) -> None:
        self._advance()
        self.answered += images

    def per_second(self) -> float | None:
        """Images per busy second; None until there is enough to go by."""
        self._advance()
        if self.answered < RATE_MIN_IMAGES or self.busy_s <= 0:
            return None
        return self.answered / self.busy_s


class Ticket:
    """One admitted request's hold on the image budget; ``answered`` feeds the measured rate."""

    def __init__(self, admission: "Admission", images: int):
        self.admission = admission
        self.images = images

    def answered(self, images: int) -> None:
        self.admission.rate.add(images)


class Admission:
    def __init__(
        self,
        max_images: int,
        max_bytes: int | None = None,
        max_wait_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self.images = 0  # in progress now
        self.bytes = 0  # of request bodies held now
        self.rate = ServiceRate(clock)

    # ---- bytes -----------------------------------------------------------------------------------
    def reserve_bytes(self, size: int) -> None:
        """Hold ``size`` more bytes of body, or raise ``Overloaded``; give them back with
        ``release_bytes``. The first body is always admitted when none is held."""
        if self.max_bytes is not None and self.bytes and self.bytes + size > self.max_bytes:
            raise Overloaded(
                f"this ingress replica holds {self.bytes} bytes of request bodies, at most {self.max_bytes}; "
                "retry later"
            )
        self.bytes += size

    def release_bytes(self, size: int) -> None:
        self.bytes -= size

    @contextmanager
    def body_bytes(self) -> Iterator["BodyHold"]:
        """A hold that grows as a body is read (``BodyHold.grow``) and is released on the way out."""
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.release_bytes(hold.size)

    # ---- images ----------------------------------------------------------------------------------
    def wait_s(self) -> float | None:
        """How long the images in progress would keep a new request waiting, at the measured rate."""
        rate = self.rate.per_second()
        return None if rate is None or not self.images else self.images / rate

    @contextmanager
    def admit(self, images: int = 1) -> Iterator[Ticket]:
        """Hold ``images`` of the image budget for the block, or raise ``Overloaded`` before it runs."""
        if self.images:
            if self.images + images > self.max_images:
                raise Overloaded(
                    f"this ingress replica is at capacity ({self.images} images in progress, at most "
                    f"{self.max_images}); retry later"
                )
            wait = self.wait_s()
            if self.max_wait_s is not None and wait is not None and wait > self.max_wait_s:
                raise Overloaded(
                    f"this ingress replica's images in progress would keep this request waiting about "
                    f"{wait:.1f} s, over its {self.max_wait_s:g} s budget; retry later"
                )
        if not self.images:
            self.rate.set_busy(True)
        self.images += images
        try:
            yield Ticket(self, images)
        finally:
            self.images -= images
            if not self.images:
                self.rate.set_busy(False)


class BodyHold:
    def __init__(self, admission: Admission):
        self.admission = admission
        self.size = 0

    def grow(self, size: int) -> None:
        self.admission.reserve_bytes(size)
        self.size += size
