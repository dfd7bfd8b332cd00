"""The CPU half of a model: bytes -> ``Item``, every check made, pixels uint8 at the model's size.

Cheap to build (no model), so every CPU worker has one. ``decode(bytes) -> uint8 HWC`` and
``prepare(uint8 HWC) -> Prepared`` (uint8 CHW) are each usable alone; ``load`` is both. With
``decode.on_device`` a JPEG comes back ``Encoded`` after the header checks alone
(``shared.device_decode`` says which JPEGs and why).
"""

from __future__ import annotations

import numpy as np

from shared.config import ModelConfig
from shared.decode import decode_image, decode_opened, open_image
from shared.device_decode import Encoded, encoded_if_device_decodable
from shared.memory import RELEASE_FROM_PIXELS, release_freed_memory
from shared.prepare import Prepared, prepare_image
from shared.registry import ModelSpec
from shared.tasks import Task

Item = Prepared | Encoded  # what the CPU half hands the device half


class ImageLoader:
    def __init__(self, config: ModelConfig):
        self.config = config
        self.spec: ModelSpec = config.spec
        self.task: Task = config.make_task()
        self._draft = self.spec.preprocess.draft_size if config.decode.draft else None  # None for detection
        decode = config.decode
        # every check open_image makes, on both paths: sizes, formats and decode work
        self._limits = dict(
            max_pixels=decode.max_pixels,
            formats=frozenset(decode.formats),
            max_bytes=decode.max_bytes,
            max_jpeg_scans=decode.max_jpeg_scans,
            max_jpeg_scan_pixels=decode.max_jpeg_scan_pixels,
        )

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, draft_size=self._draft, **self._limits)

    def prepare(self, image: np.ndarray) -> Prepared:
        return prepare_image(image, self.spec.preprocess)

    def decode_and_prepare(self, data: bytes) -> Prepared:
        """The CPU path whatever the format (the device decoder's fallback)."""
        return self.prepare(self.decode(data))

    def load(self, data: bytes) -> Item:
        image = open_image(data, **self._limits)  # the header checks: nothing decoded yet
        large = image.width * image.height >= RELEASE_FROM_PIXELS
        try:
            if self.config.decode.on_device:
                encoded = encoded_if_device_decodable(image, data)
                if encoded is not None:
                    return encoded
            return self.prepare(decode_opened(image, draft_size=self._draft))
        finally:
            if large:
                image = None  # the full-size pixels go now, then what malloc kept of them
                release_freed_memory()
