"""The CPU stage: file bytes -> uint8 CHW pixels at the model's input size, one row per file.

Runs as Ray Data tasks (``map_batches`` with a function), apart from the model actors. Each
row is decoded alone through the shared ``ImageLoader``; a bad file becomes a row with
``error`` (the TwinferError code) and ``error_message`` and empty pixels. One bad image never
fails the task.

Pixels cross to the actors as raw uint8 bytes plus their (3, H, W) shape, so classification
(fixed size) and detection (sizes vary per image) travel the same way, one byte per channel.
With ``decode.on_device`` a JPEG crosses still encoded (``encoding`` "jpeg", its header already
checked here) and the model actor decodes it with the rest of its batch (``shared.device_decode``).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from batch.listing import label_for
from batch.uris import Location
from shared.config import ModelConfig
from shared.device_decode import Encoded
from shared.errors import TwinferError
from shared.prepare import Prepared
from shared.wrapper import ImageLoader, Item

logger = logging.getLogger(__name__)

DECODED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # full URI of the input file
        ("label", pa.string()),  # directory label, or null
        ("error", pa.string()),  # TwinferError code, null when the image decoded
        ("error_message", pa.string()),
        ("encoding", pa.string()),  # "uint8_chw", or "jpeg" (left for the device decoder); null on error rows
        ("pixels", pa.binary()),  # uint8 CHW, C-order (or the JPEG file's bytes); empty on error rows
        ("shape", pa.list_(pa.int32())),  # (3, H, W); null on error and "jpeg" rows
        ("original_size", pa.list_(pa.int32())),  # (H, W) of the (upright) image; null on error rows
        ("orientation", pa.int32()),  # EXIF orientation of a "jpeg" row; null otherwise
    ]
)


def decode_batch(batch: pa.Table, *, model: ModelConfig, input_location: Location) -> pa.Table:
    """``read_binary_files`` rows (``bytes``, ``path``) -> ``DECODED_SCHEMA`` rows."""
    loader = ImageLoader(model)
    columns: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        columns["path"].append(input_location.uri_for(path))
        columns["label"].append(label_for(path, input_location.path))
        error, message, item = load_one(loader, data)
        encoded = isinstance(item, Encoded)
        columns["error"].append(error)
        columns["error_message"].append(message)
        columns["encoding"].append(None if item is None else "jpeg" if encoded else "uint8_chw")
        columns["pixels"].append(b"" if item is None else item.data.tobytes() if encoded else item.pixels.tobytes())
        columns["shape"].append(list(item.pixels.shape) if isinstance(item, Prepared) else None)
        columns["original_size"].append(None if item is None else list(item.original_size))
        columns["orientation"].append(item.orientation if encoded else None)
    return pa.table(columns, schema=DECODED_SCHEMA)


def load_one(loader: ImageLoader, data: bytes | None) -> tuple[str | None, str | None, Item | None]:
    """(error code, message, None) for a bad file, (None, None, item) for a good one."""
    try:
        return None, None, loader.load(data or b"")
    except TwinferError as exc:
        return exc.code, str(exc), None
    except Exception as exc:  # a bug or an exotic file must still cost one row, not the job
        logger.exception("unexpected error decoding an image")
        return TwinferError.code, f"{type(exc).__name__}: {exc}", None


def item_from_row(pixels: bytes | np.ndarray, row: dict, copy: bool = True) -> Item:
    """Rebuild the item the loader made from a good row (``encoding``, ``shape``, ``original_size``,
    ``orientation``) and its ``pixels``. ``copy=False`` keeps a read-only view (fine when the batch
    is stacked into a new array anyway); torch.from_numpy wants a writable copy."""
    size = (int(row["original_size"][0]), int(row["original_size"][1]))
    array = np.frombuffer(pixels, dtype=np.uint8)
    if row["encoding"] == "jpeg":
        return Encoded(array, int(row["orientation"]), size)
    array = array.reshape(row["shape"])
    return Prepared(array.copy() if copy else array, size)


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
