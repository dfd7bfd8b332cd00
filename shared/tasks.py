"""What a model is asked to do. A task owns everything that differs between tasks:

- its request parameters (parsing, validation, defaults), online and offline alike;
- how the model's raw output is reduced on the device (only what the answer needs crosses to the
  host) and turned into the answer for each image;
- its HTTP route and response body, and its Parquet columns (writing rows and reading them back);
- whether ``evaluate`` applies;
- its output tensors in the Open Inference Protocol (KServe v2; ``deployments/v2``).

The wrapper, the ingress, the Ray Data actor and the CLI ask the task; none of them branches on a
task's name. Adding a task = one class here, registered in ``TASKS``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
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

    # ---- Open Inference Protocol (KServe v2) outputs -------------------------------------------------
    # Every output tensor is batched over the request's N images: the protocol adapter
    # (deployments/v2) only parses requests and serialises what these methods return.
    v2_output_names: ClassVar[tuple[str, ...]]  # every output tensor the task can answer
    v2_default_outputs: ClassVar[tuple[str, ...]]  # those sent when a request names none
    v2_classification_outputs: ClassVar[tuple[str, ...]] = ()  # outputs that take the classification extension

    def v2_outputs(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        """name -> (datatype, shape; -1 where it varies) of each output, in ``v2_output_names``
        order, from the model's ``ModelServer.describe()`` (label count, embedding width)."""
        raise NotImplementedError

    def v2_requested(self, outputs: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
        """The outputs a request asked for (name -> its parameters), checked; the default set when none."""
        if not outputs:
            return {name: {} for name in self.v2_default_outputs}
        checked = {}
        for name, parameters in outputs.items():
            if name not in self.v2_output_names:
                raise InvalidParameter(
                    f"no output {name!r}; a {self.name} model answers {', '.join(self.v2_output_names)}"
                )
            checked[name] = dict(parameters)
            if parameters.get("classification") is not None:
                if name not in self.v2_classification_outputs:
                    where = ", ".join(self.v2_classification_outputs) or f"no output of a {self.name} model"
                    raise InvalidParameter(f"the classification extension applies to {where}, not to {name!r}")
                checked[name]["classification"] = validate_class_count(parameters["classification"])
        return checked

    def v2_params(self, params: dict, outputs: Mapping[str, Mapping[str, Any]]) -> dict:
        """The model call's parameters for a request whose ``params()`` are ``params`` and that asks ``outputs``."""
        return params

    def v2_tensors(
        self, answers: Sequence[Any], outputs: Mapping[str, Mapping[str, Any]], params: dict
    ) -> dict[str, np.ndarray]:
        """N images' answers -> one array per requested output, in request order: float32, int64,
        int32, or an object array of ``bytes`` (BYTES)."""
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

    v2_output_names = ("scores", "indices", "labels", "probabilities")
    v2_default_outputs = ("scores", "indices", "labels")
    v2_classification_outputs = ("scores", "probabilities")

    def v2_outputs(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        classes = described.get("labels") or -1
        return {
            "scores": ("FP32", [-1, -1]),  # [N, top_k], best first
            "indices": ("INT64", [-1, -1]),
            "labels": ("BYTES", [-1, -1]),
            "probabilities": ("FP32", [-1, classes]),  # [N, classes]: every class's softmax probability
        }

    def v2_params(self, params: dict, outputs: Mapping[str, Mapping[str, Any]]) -> dict:
        """The largest k any output needs; every class for ``probabilities`` (the reduction keeps
        at most the model's width, so that is what "every" asks)."""
        ks = []
        for name, parameters in outputs.items():
            if parameters.get("classification") is not None:
                ks.append(parameters["classification"])
            elif name == "probabilities":
                ks.append(EVERY_CLASS)
            else:
                ks.append(params["top_k"])
        return {**params, "top_k": max(ks)}

    def v2_tensors(
        self, answers: Sequence[list[dict]], outputs: Mapping[str, Mapping[str, Any]], params: dict
    ) -> dict[str, np.ndarray]:
        k = params["top_k"]
        tensors = {}
        for name, parameters in outputs.items():
            count = parameters.get("classification")
            if count is not None:
                # Triton's classification extension: "score:index:label", best first
                tensors[name] = _bytes_rows(
                    [[f"{p['score']:.8f}:{p['index']}:{p['label']}" for p in a[:count]] for a in answers]
                )
            elif name == "probabilities":
                classes = max((len(a) for a in answers), default=0)
                full = np.zeros((len(answers), classes), np.float32)
                for row, answer in enumerate(answers):
                    full[row, [p["index"] for p in answer]] = [p["score"] for p in answer]
                tensors[name] = full
            elif name == "scores":
                tensors[name] = np.array([[p["score"] for p in a[:k]] for a in answers], np.float32).reshape(
                    len(answers), -1
                )
            elif name == "indices":
                tensors[name] = np.array([[p["index"] for p in a[:k]] for a in answers], np.int64).reshape(
                    len(answers), -1
                )
            else:  # labels
                tensors[name] = _bytes_rows([[p["label"] for p in a[:k]] for a in answers])
        return tensors


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

    # ragged over images: one row per detection, all images' detections in order, and image_index
    # saying whose each is (a request's N images may have 0..many detections each)
    v2_output_names = ("boxes", "scores", "label_indices", "labels", "image_index")
    v2_default_outputs = v2_output_names

    def v2_outputs(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        return {
            "boxes": ("FP32", [-1, 4]),  # [D, 4]: x1, y1, x2, y2 in the original image's pixels
            "scores": ("FP32", [-1]),
            "label_indices": ("INT64", [-1]),
            "labels": ("BYTES", [-1]),
            "image_index": ("INT32", [-1]),  # which of the request's images (0-based) each detection is in
        }

    def v2_tensors(
        self, answers: Sequence[list[dict]], outputs: Mapping[str, Mapping[str, Any]], params: dict
    ) -> dict[str, np.ndarray]:
        found = [(image, d) for image, answer in enumerate(answers) for d in answer]
        columns = {
            "boxes": lambda: np.array([d["box"] for _, d in found], np.float32).reshape(-1, 4),
            "scores": lambda: np.array([d["score"] for _, d in found], np.float32),
            "label_indices": lambda: np.array([d["index"] for _, d in found], np.int64),
            "labels": lambda: np.array([d["label"].encode() for _, d in found], object).reshape(-1),
            "image_index": lambda: np.array([image for image, _ in found], np.int32),
        }
        return {name: columns[name]() for name in outputs}


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

    v2_output_names = ("embedding",)
    v2_default_outputs = v2_output_names

    def v2_outputs(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        return {"embedding": ("FP32", [-1, described.get("dim") or -1])}  # [N, dim], L2-normalised

    def v2_tensors(
        self, answers: Sequence[list[float]], outputs: Mapping[str, Mapping[str, Any]], params: dict
    ) -> dict[str, np.ndarray]:
        return {"embedding": np.array(answers, np.float32).reshape(len(answers), -1)}

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
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"top_k must be an integer, got {value!r}") from None
    if not 1 <= k <= MAX_TOP_K:
        raise InvalidParameter(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
    return k


def validate_score_threshold(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"score_threshold must be a number, got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise InvalidParameter(f"score_threshold must be within [0, 1], got {t}")
    return t


def _float_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.float() if tensor.is_floating_point() else tensor).cpu()


# the reduction's top_k clamps to the model's width, so this asks for every class
EVERY_CLASS = 2**31 - 1


def validate_class_count(value: Any) -> int:
    """The classification extension's k (Triton's ``class_count``): an integer in 1..MAX_TOP_K."""
    k = value
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    elif isinstance(k, str) and k.strip().isdigit():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise InvalidParameter(f"classification must be an integer between 1 and {MAX_TOP_K}, got {value!r}")
    return k


def _bytes_rows(rows: list[list[str]]) -> np.ndarray:
    """Equal-length rows of text -> a [len(rows), width] object array of UTF-8 ``bytes`` (v2 BYTES)."""
    array = np.empty((len(rows), len(rows[0]) if rows else 0), object)
    for r, row in enumerate(rows):
        array[r, :] = [text.encode() for text in row]
    return array
