"""The Ray Data actor: the shared ``ModelWrapper`` over decoded batches -> output rows.

Built once per actor (``map_batches(Predictor, compute=ActorPoolStrategy(...))``); each call
runs ``ModelWrapper.predict_batch`` - the very method the online deployment calls - on the rows
that decoded, and passes error rows through with null predictions. A JPEG left for the device
decoder that no decoder can read becomes an error row here.
"""

from __future__ import annotations

import pyarrow as pa

from shared.config import ModelConfig
from shared.errors import TwinferError
from shared.wrapper import DEFAULT_TOP_K, ModelWrapper

from batch.decode_stage import item_from_row, pixel_views

_COMMON = [
    ("path", pa.string()),
    ("label", pa.string()),
    ("model", pa.string()),
    ("error", pa.string()),
    ("error_message", pa.string()),
]
CLASSIFY_SCHEMA = pa.schema(
    _COMMON
    + [
        ("top_labels", pa.list_(pa.string())),
        ("top_indices", pa.list_(pa.int64())),
        ("top_scores", pa.list_(pa.float64())),
    ]
)
DETECT_SCHEMA = pa.schema(
    _COMMON
    + [
        ("boxes", pa.list_(pa.list_(pa.float64()))),  # [x1, y1, x2, y2] in original pixels
        ("labels", pa.list_(pa.string())),
        ("label_indices", pa.list_(pa.int64())),
        ("scores", pa.list_(pa.float64())),
    ]
)


# output column <- key of the wrapper's prediction dicts; one mapping for writing and reading back
CLASSIFY_COLUMNS = {"top_labels": "label", "top_indices": "index", "top_scores": "score"}
DETECT_COLUMNS = {"boxes": "box", "labels": "label", "label_indices": "index", "scores": "score"}


def predictions_from_row(row: dict, task: str = "classify") -> list[dict] | None:
    """An output row back to the wrapper's prediction dicts (None for an error row)."""
    columns = CLASSIFY_COLUMNS if task == "classify" else DETECT_COLUMNS
    if row[next(iter(columns))] is None:
        return None
    values = zip(*(row[column] for column in columns))
    return [dict(zip(columns.values(), entry)) for entry in values]


def output_schema(task: str) -> pa.Schema:
    return CLASSIFY_SCHEMA if task == "classify" else DETECT_SCHEMA


class Predictor:
    """Callable class for ``map_batches``: decoded rows in, prediction rows out (same count)."""

    def __init__(self, model: ModelConfig, top_k: int = DEFAULT_TOP_K, batch_size: int = 64):
        """``batch_size``: images per model call. Ray Data may hand over more rows per call (fewer
        calls, less per-call overhead); they are run ``batch_size`` at a time."""
        # the model sees batch_size (a last, short chunk: padded up when compiled)
        self.wrapper = ModelWrapper(model, batch_sizes=(batch_size,))
        self.batch_size = batch_size
        self.model_name = model.name
        self.task = self.wrapper.spec.task
        self.schema = output_schema(self.task)
        self.params = {"top_k": top_k} if self.task == "classify" else {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["error", "error_message", "encoding", "shape", "original_size", "orientation"]).to_pylist()
        pixels = pixel_views(batch.column("pixels"))
        good = [i for i, row in enumerate(rows) if row["error"] is None]
        copy = self.task != "classify"  # classification stacks the batch into a new array anyway
        items = [item_from_row(pixels[i], rows[i], copy) for i in good]
        results: list[list[dict] | None] = [None] * len(rows)
        errors = [row["error"] for row in rows]
        messages = [row["error_message"] for row in rows]
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            for i, result in zip(good[start:], self.wrapper.predict_batch(chunk, [self.params] * len(chunk))):
                if isinstance(result, TwinferError):
                    errors[i], messages[i] = result.code, str(result)
                else:
                    results[i] = result
        columns = {
            "path": batch.column("path"),
            "label": batch.column("label"),
            "model": pa.array([self.model_name] * len(rows), pa.string()),
            "error": pa.array(errors, pa.string()),
            "error_message": pa.array(messages, pa.string()),
            **self._prediction_columns(results),
        }
        return pa.table(columns, schema=self.schema)

    def _prediction_columns(self, results: list[list[dict] | None]) -> dict[str, list]:
        def column(key: str) -> list:
            return [None if r is None else [p[key] for p in r] for r in results]

        columns = CLASSIFY_COLUMNS if self.task == "classify" else DETECT_COLUMNS
        return {name: column(key) for name, key in columns.items()}
