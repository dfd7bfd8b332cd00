"""The Ray Data actor: the shared ``ModelWrapper`` over decoded batches -> output rows.

Built once per actor (``map_batches(Predictor, compute=ActorPoolStrategy(...))``); each call
runs ``ModelWrapper.predict_batch`` - the very method the online deployment calls - on the rows
that decoded, and passes error rows through with null predictions. A JPEG left for the device
decoder that no decoder can read becomes an error row here.
"""

from __future__ import annotations

import pyarrow as pa

from batch.decode_stage import item_from_row, pixel_views
from shared.config import ModelConfig
from shared.errors import TwinferError
from shared.tasks import DEFAULT_TOP_K
from shared.wrapper import ModelWrapper

COMMON_FIELDS = [
    pa.field("path", pa.string()),
    pa.field("label", pa.string()),
    pa.field("model", pa.string()),
    pa.field("error", pa.string()),
    pa.field("error_message", pa.string()),
]


def output_schema(model: ModelConfig, dim: int | None = None) -> pa.Schema:
    """The rows a backfill writes: the common columns, then the task's prediction columns
    (``dim``: the width of vector answers, e.g. ``planned_output_dim(model)`` for embeddings)."""
    return pa.schema(COMMON_FIELDS + model.make_task(labels=()).arrow_fields(dim))


class Predictor:
    """Callable class for ``map_batches``: decoded rows in, prediction rows out (same count)."""

    def __init__(self, model: ModelConfig, top_k: int = DEFAULT_TOP_K, batch_size: int = 64, dim: int | None = None):
        """``batch_size``: images per model call. Ray Data may hand over more rows per call (fewer
        calls, less per-call overhead); they are run ``batch_size`` at a time. ``dim``: the vector
        width the output schema was planned with; the model built here must have it."""
        # the model sees batch_size (a last, short chunk: padded up when compiled)
        self.wrapper = ModelWrapper(model, batch_sizes=(batch_size,))
        if self.wrapper.output_dim != dim:
            raise RuntimeError(
                f"{model.name} answers vectors of {self.wrapper.output_dim}, the output was planned for {dim}"
            )
        self.batch_size = batch_size
        self.model_name = model.name
        self.task = self.wrapper.task
        self.dim = dim
        self.schema = output_schema(model, dim)
        self.params = self.task.params({"top_k": top_k})

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["error", "error_message", "encoding", "shape", "original_size", "orientation"]).to_pylist()
        pixels = pixel_views(batch.column("pixels"))
        good = [i for i, row in enumerate(rows) if row["error"] is None]
        copy = not self.task.fixed_size  # fixed-size inputs are stacked into a new array anyway
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

    def _prediction_columns(self, results: list) -> dict[str, pa.Array]:
        return self.task.columns(results, self.dim)
