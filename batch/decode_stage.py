"""The CPU stage: file bytes -> uint8 CHW pixels at the model's input size, one row per file.

Runs as Ray Data tasks (``map_batches`` with a function), apart from the model actors. Each
row is decoded alone through the shared ``ImageLoader``; a bad file becomes a row with
``error`` (the TwinferError code) and ``error_message`` and empty pixels. One bad image never
fails the task.

Pixels cross to the actors as raw uint8 bytes plus their (3, H, W) shape, so classification
(fixed size) and detection (sizes vary per image) travel the same way, one byte per channel.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from shared.config import ModelConfig
from shared.errors import TwinferError
from shared.prepare import Prepared
from shared.wrapper import ImageLoader

from batch.listing import label_for
from batch.uris import Location

logger = logging.getLogger(__name__)

DECODED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # full URI of the input file
        ("label", pa.string()),  # directory label, or null
        ("error", pa.string()),  # TwinferError code, null when the image decoded
        ("error_message", pa.string()),
        ("pixels", pa.binary()),  # uint8 CHW, C-order; empty on error rows
        ("shape", pa.list_(pa.int32())),  # (3, H, W); null on error rows
        ("original_size", pa.list_(pa.int32())),  # (H, W) of the decoded image; null on error rows
    ]
)


def decode_batch(batch: pa.Table, *, model: ModelConfig, input_location: Location) -> pa.Table:
    """``read_binary_files`` rows (``bytes``, ``path``) -> ``DECODED_SCHEMA`` rows."""
    loader = ImageLoader(model)
    columns: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        columns["path"].append(input_location.uri_for(path))
        columns["label"].append(label_for(path, input_location.path))
        error, message, prepared = load_one(loader, data)
        columns["error"].append(error)
        columns["error_message"].append(message)
        columns["pixels"].append(prepared.pixels.tobytes() if prepared else b"")
        columns["shape"].append(list(prepared.pixels.shape) if prepared else None)
        columns["original_size"].append(list(prepared.original_size) if prepared else None)
    return pa.table(columns, schema=DECODED_SCHEMA)


def load_one(loader: ImageLoader, data: bytes | None) -> tuple[str | None, str | None, Prepared | None]:
    """(error code, message, None) for a bad file, (None, None, Prepared) for a good one."""
    try:
        return None, None, loader.load(data or b"")
    except TwinferError as exc:
        return exc.code, str(exc), None
    except Exception as exc:  # a bug or an exotic file must still cost one row, not the job
        logger.exception("unexpected error decoding an image")
        return TwinferError.code, f"{type(exc).__name__}: {exc}", None


def prepared_from_row(pixels: bytes, shape: list[int], original_size: list[int]) -> Prepared:
    """Rebuild the ``Prepared`` the loader made (a writable copy: torch.from_numpy wants one)."""
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(shape).copy()
    return Prepared(array, (int(original_size[0]), int(original_size[1])))
