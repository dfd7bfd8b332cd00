"""What a model is asked to do. A task owns everything that differs between tasks:

- its request parameters (parsing, validation, defaults), online and offline alike;
- how the model's raw output is reduced on the device (only what the answer needs crosses to the
  host) and turned into the answer for each image;
- its HTTP route and response body, and its Parquet columns (writing rows and reading them back);
- whether ``evaluate`` applies.

Its output tensors in the Open Inference Protocol live with the protocol (``deployments/v2/outputs.py``).

The wrapper, the ingress, the Ray Data actor and the CLI ask the task; none of them branches on a
task's name. Adding a task = one class here, registered in ``TASKS``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import pyarrow as pa
import torch

from shared.errors import InvalidParameter
from shared.prepare import Prepared

MAX_TOP_K = 100
DEFAULT_TOP_K = 5


class Task:
    name: ClassVar[str]  # the HTTP route: POST /v1/models/{model}/{name}
    head: ClassVar[str]  # the model head it needs: "classify" or "detect"
    fixed_size: ClassVar[bool]  # every input has the model's size: batched in one tensor, padded, compiled
    evaluable: ClassVar[bool] = False  # `evaluate` (top-1 / top-5 against folder labels) applies
    vector_output: ClassVar[bool] = False  # each answer is a vector whose width comes from the model

    def __init__(self, labels: Sequence[str], score_threshold: float = 0.5, top_k: int = DEFAULT_TOP_K):
        self.labels = labels
        self.default_top_k = top_k
        self.default_score_threshold = score_threshold

    # ---- request parameters ----------------------------------------------------------------------
    def params(self, query: Mapping[str, Any]) -> dict:
        """Validated parameters from a request's query (or a backfill's settings); defaults filled."""
        return {}

    # ---- the model ----------------------------------------------------------------------------------
    def adapt_model(self, model: torch.nn.Module, embed_head=None) -> torch.nn.Module:
        """The module to run for this task (a classifier's head may come off; ``embed_head``: the
        model family's own way to do that, from its spec)."""
        return model

    def output_dim(self, model: torch.nn.Module) -> int | None:
        """Width of each image's answer vector, when the task has one (embeddings)."""
        return None

    # ---- device half: reduce on the device, then the answer per image ---------------------------------
    def reduce(self, output: Any, params: Sequence[dict]) -> Any:
        """The model's output for a batch -> what the answers need, on the host."""
        raise NotImplementedError

    def full(self, output: Any) -> Any:
        """The model's whole output on the host (benchmarks, tests, agreement checks)."""
        return output.float().cpu()

    def answers(self, reduced: Any, items: Sequence[Prepared], params: Sequence[dict]) -> list:
        raise NotImplementedError

    # ---- outputs --------------------------------------------------------------------------------------
    response_key: ClassVar[str]

    def response(self, model: str, answer: Any) -> dict:
        """The HTTP body for one image's answer."""
        return {"model": model, self.response_key: answer}

    def arrow_fields(self, dim: int | None = None) -> list[pa.Field]:
        """The Parquet prediction columns (after path, label, model, error, error_message)."""
        raise NotImplementedError

    def columns(self, answers: Sequence[Any | None], dim: int | None = None) -> dict[str, pa.Array]:
        """Answers (None for error rows) -> the prediction columns."""
        raise NotImplementedError

    def answer_from_row(self, row: Mapping[str, Any]) -> Any | None:
        """A written row back to the answer the wrapper gave (None for an error row)."""
        raise NotImplementedError


class _ListOfDicts(Task):
    """Answers that are lists of dicts, written as one list column per key."""

    column_keys: ClassVar[dict[str, str]]  # column -> key of the answer's dicts
    column_types: ClassVar[dict[str, pa.DataType]]  # column -> element type

    def arrow_fields(self, dim: int | None = None) -> list[pa.Field]:
        return [pa.field(column, pa.list_(self.column_types[column])) for column in self.column_keys]

    def columns(self, answers: Sequence[list[dict] | None], dim: int | None = None) -> dict[str, pa.Array]:
        return {
            column: pa.array(
                [None if a is None else [p[key] for p in a] for a in answers], pa.list_(self.column_types[column])
            )
            for column, key in self.column_keys.items()
        }

    def answer_from_row(self, row: Mapping[str, Any]) -> list[dict] | None:
        if row[next(iter(self.column_keys))] is None:
            return None
        values = zip(*(row[column] for column in self.column_keys))
        return [dict(zip(self.column_keys.values(), entry)) for entry in values]


class ClassifyTask(_ListOfDicts):
    name = "classify"
    head = "classify"
    fixed_size = True
    evaluable = True
    response_key = "predictions"
    column_keys = {"top_labels": "label", "top_indices": "index", "top_scores": "score"}
    column_types = {"top_labels": pa.string(), "top_indices": pa.int64(), "top_scores": pa.float64()}

    def params(self, query: Mapping[str, Any]) -> dict:
        return {"top_k": validate_top_k(query.get("top_k", self.default_top_k))}

    def reduce(self, output: torch.Tensor, params: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's largest k probabilities and their classes: k values per image cross to the
        host, not every class's probability."""
        k_max = min(max(p.get("top_k", self.default_top_k) for p in params), output.shape[1])
        scores, indices = output.float().softmax(dim=-1).topk(k_max, dim=1)
        return scores.cpu(), indices.cpu()

    def full(self, output: torch.Tensor) -> torch.Tensor:
        return output.float().softmax(dim=-1).cpu()

    def answers(self, reduced, items: Sequence[Prepared], params: Sequence[dict]) -> list[list[dict]]:
        """Predictions from (scores, indices) already reduced to the batch's largest k, or from all
        probabilities; each image keeps its own k."""
        ks = [p.get("top_k", self.default_top_k) for p in params]
        if not ks:
            return []
        if isinstance(reduced, torch.Tensor):
            reduced = reduced.topk(min(max(ks), reduced.shape[1]), dim=1)
        scores, indices = reduced[0].tolist(), reduced[1].tolist()
        return [
            [{"label": self.label(i), "index": i, "score": s} for s, i in zip(scores[row][:k], indices[row][:k])]
            for row, k in enumerate(ks)
        ]

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"class_{index}"


class DetectTask(_ListOfDicts):
    name = "detect"
    head = "detect"
    fixed_size = False
    response_key = "detections"
    column_keys = {"boxes": "box", "labels": "label", "label_indices": "index", "scores": "score"}
    column_types = {
        "boxes": pa.list_(pa.float64()),  # [x1, y1, x2, y2] in the original image's pixels
        "labels": pa.string(),
        "label_indices": pa.int64(),
        "scores": pa.float64(),
    }

    def params(self, query: Mapping[str, Any]) -> dict:
        return {"score_threshold": validate_score_threshold(query.get("score_threshold", self.default_score_threshold))}

    def reduce(self, output: list[dict], params: Sequence[dict]) -> list[dict]:
        return self.full(output)

    def full(self, output: list[dict]) -> list[dict]:
        return [{key: _float_cpu(value) for key, value in image.items()} for image in output]

    def answers(self, reduced: list[dict], items: Sequence[Prepared], params: Sequence[dict]) -> list[list[dict]]:
        return [
            self._detections(out, item, p.get("score_threshold", self.default_score_threshold))
            for out, item, p in zip(reduced, items, params)
        ]

    def _detections(self, out: dict, item: Prepared, threshold: float) -> list[dict]:
        height, width = item.original_size
        sy, sx = height / item.pixels.shape[1], width / item.pixels.shape[2]
        scale = torch.tensor([sx, sy, sx, sy])
        keep = out["scores"] >= threshold
        boxes = (out["boxes"][keep] * scale).clamp_min(0)
        boxes[:, 0::2] = boxes[:, 0::2].clamp_max(width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp_max(height)
        labels = self.labels
        return [
            {
                "label": labels[i] if i < len(labels) else f"class_{i}",
                "index": i,
                "score": s,
                "box": [round(v, 2) for v in box],
            }
            for i, s, box in zip(out["labels"][keep].tolist(), out["scores"][keep].tolist(), boxes.tolist())
        ]


class EmbedTask(Task):
    """A classifier without its head: the pooled penultimate features, L2-normalised, float32.
    The head is the model's last ``Linear`` layer; it becomes the identity, so what fed it is the
    answer (torchvision and timm classifiers, Hugging Face ``...ForImageClassification``)."""

    name = "embed"
    head = "classify"
    fixed_size = True
    vector_output = True
    response_key = "embedding"

    def adapt_model(self, model: torch.nn.Module, embed_head=None) -> torch.nn.Module:
        if embed_head is not None:
            model, dim = embed_head(model)
        else:
            parent, attribute, linear = _last_linear(model)
            setattr(parent, attribute, torch.nn.Identity())
            dim = linear.in_features  # what the identity now passes on
        model.twinfer_embedding_dim = dim
        return model

    def output_dim(self, model: torch.nn.Module) -> int:
        return int(model.twinfer_embedding_dim)

    def reduce(self, output: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
        return self.full(output)

    def full(self, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(output.float().flatten(1), dim=1).cpu()

    def answers(self, reduced: torch.Tensor, items: Sequence[Prepared], params: Sequence[dict]) -> list[list[float]]:
        return reduced.tolist()

    def response(self, model: str, answer: list[float]) -> dict:
        return {"model": model, "dim": len(answer), "embedding": answer}

    def arrow_fields(self, dim: int | None = None) -> list[pa.Field]:
        return [pa.field("embedding", self._type(dim))]

    def columns(self, answers: Sequence[list[float] | None], dim: int | None = None) -> dict[str, pa.Array]:
        return {"embedding": pa.array(answers, self._type(dim))}

    def answer_from_row(self, row: Mapping[str, Any]) -> list[float] | None:
        return None if row["embedding"] is None else list(row["embedding"])

    @staticmethod
    def _type(dim: int | None) -> pa.DataType:
        if dim is None:
            raise ValueError("the embedding column needs the model's dimension")
        return pa.list_(pa.float32(), dim)  # fixed_size_list<float32>[dim]: a vector column


TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassifyTask, DetectTask, EmbedTask)}


def _last_linear(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.Linear]:
    """(parent, attribute, layer) of the last ``Linear`` registered in ``model``: the classifier head."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier head to take off for embeddings")
    name, linear = found
    parent_name, _, attribute = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attribute, linear


def validate_top_k(value: Any) -> int:
    """An integer in 1..MAX_TOP_K: an int, an integral float, or decimal text (a query string)."""
    k = _integer(value)
    if k is None:
        raise InvalidParameter(f"top_k must be an integer, got {_shown(value)}")
    if not 1 <= k <= MAX_TOP_K:
        raise InvalidParameter(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
    return k


def validate_score_threshold(value: Any) -> float:
    """A number in [0, 1]: a float, an int, or decimal text; NaN and infinities are refused."""
    t = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str) and len(value) <= MAX_NUMBER_TEXT:
        try:
            t = float(value)
        except ValueError:
            pass
    if t is None:
        raise InvalidParameter(f"score_threshold must be a number, got {_shown(value)}")
    if not 0.0 <= t <= 1.0:  # also false for NaN
        raise InvalidParameter(f"score_threshold must be within [0, 1], got {t}")
    return t


MAX_NUMBER_TEXT = 32  # characters of a number given as text; longer is no parameter value


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None  # NaN and infinities are not integral
    if isinstance(value, str) and len(value) <= MAX_NUMBER_TEXT:
        text = value.strip()
        if text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _float_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.float() if tensor.is_floating_point() else tensor).cpu()
