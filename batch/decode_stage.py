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


def prepared_from_row(pixels: bytes | np.ndarray, shape: list[int], original_size: list[int], copy: bool = True) -> Prepared:
    """Rebuild the ``Prepared`` the loader made. ``copy=False`` keeps a read-only view (fine when
    the batch is stacked into a new array anyway); torch.from_numpy wants a writable copy."""
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
    return Prepared(array.copy() if copy else array, (int(original_size[0]), int(original_size[1])))


def pixel_views(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """The ``pixels`` column as flat uint8 views into the Arrow buffers: no per-row bytes objects
    and no copy (``to_pylist`` would copy every image twice before the batch is even stacked)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views: list[np.ndarray] = []
    for chunk in chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
        views.extend(data[start:end] for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    return views
