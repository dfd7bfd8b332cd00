"""Each task's output tensors in the Open Inference Protocol: which outputs it can answer, their
datatypes and shapes, and the tensors built from a request's answers.

Every output tensor is batched over the request's N images; the transports (``rest``,
``grpc_service``) only serialise what ``tensors`` returns. A task without an entry in ``OUTPUTS``
cannot be served over the protocol (a test keeps the two registries in step).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from shared.errors import InvalidParameter
from shared.tasks import MAX_TOP_K, Task

Requested = Mapping[str, Mapping[str, Any]]  # output name -> its parameters, in request order

# the reduction's top_k clamps to the model's width, so this asks for every class
EVERY_CLASS = 2**31 - 1


class Outputs:
    names: ClassVar[tuple[str, ...]]  # every output tensor the task can answer
    defaults: ClassVar[tuple[str, ...]]  # those sent when a request names none
    classification: ClassVar[tuple[str, ...]] = ()  # outputs that take the classification extension
    per_image: ClassVar[bool] = True  # every output has one row per image (the batch dimension first)

    def __init__(self, task: Task):
        self.task = task

    def describe(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        """name -> (datatype, shape; -1 where it varies) of each output, in ``names`` order, from the
        model's ``ModelServer.describe()`` (label count, embedding width)."""
        raise NotImplementedError

    def requested(self, outputs: Requested | None) -> dict[str, dict[str, Any]]:
        """The outputs a request asked for (name -> its parameters), checked; the default set when none."""
        if not outputs:
            return {name: {} for name in self.defaults}
        checked = {}
        for name, parameters in outputs.items():
            if name not in self.names:
                raise InvalidParameter(f"no output {name!r}; a {self.task.name} model answers {', '.join(self.names)}")
            checked[name] = dict(parameters)
            if parameters.get("classification") is not None:
                if name not in self.classification:
                    where = ", ".join(self.classification) or f"no output of a {self.task.name} model"
                    raise InvalidParameter(f"the classification extension applies to {where}, not to {name!r}")
                checked[name]["classification"] = validate_class_count(parameters["classification"])
        return checked

    def model_params(self, params: dict, outputs: Requested) -> dict:
        """The model call's parameters for a request whose ``task.params()`` are ``params``, asking ``outputs``."""
        return params

    def tensors(self, answers: Sequence[Any], outputs: Requested, params: dict) -> dict[str, np.ndarray]:
        """N images' answers -> one array per requested output, in request order: float32, int64,
        int32, or an object array of ``bytes`` (BYTES)."""
        raise NotImplementedError


class ClassifyOutputs(Outputs):
    names = ("scores", "indices", "labels", "probabilities")
    defaults = ("scores", "indices", "labels")
    classification = ("scores", "probabilities")

    def describe(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        classes = described.get("labels") or -1
        return {
            "scores": ("FP32", [-1, -1]),  # [N, top_k], best first
            "indices": ("INT64", [-1, -1]),
            "labels": ("BYTES", [-1, -1]),
            "probabilities": ("FP32", [-1, classes]),  # [N, classes]: every class's softmax probability
        }

    def model_params(self, params: dict, outputs: Requested) -> dict:
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

    def tensors(self, answers: Sequence[list[dict]], outputs: Requested, params: dict) -> dict[str, np.ndarray]:
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
                tensors[name] = _rows([[p["score"] for p in a[:k]] for a in answers], np.float32)
            elif name == "indices":
                tensors[name] = _rows([[p["index"] for p in a[:k]] for a in answers], np.int64)
            else:  # labels
                tensors[name] = _bytes_rows([[p["label"] for p in a[:k]] for a in answers])
        return tensors


class DetectOutputs(Outputs):
    # ragged over images: one row per detection, all images' detections in order, and image_index
    # saying whose each is (a request's N images may have 0..many detections each)
    names = ("boxes", "scores", "label_indices", "labels", "image_index")
    defaults = names
    per_image = False

    def describe(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        return {
            "boxes": ("FP32", [-1, 4]),  # [D, 4]: x1, y1, x2, y2 in the original image's pixels
            "scores": ("FP32", [-1]),
            "label_indices": ("INT64", [-1]),
            "labels": ("BYTES", [-1]),
            "image_index": ("INT32", [-1]),  # which of the request's images (0-based) each detection is in
        }

    def tensors(self, answers: Sequence[list[dict]], outputs: Requested, params: dict) -> dict[str, np.ndarray]:
        found = [(image, d) for image, answer in enumerate(answers) for d in answer]
        columns = {
            "boxes": lambda: np.array([d["box"] for _, d in found], np.float32).reshape(-1, 4),
            "scores": lambda: np.array([d["score"] for _, d in found], np.float32),
            "label_indices": lambda: np.array([d["index"] for _, d in found], np.int64),
            "labels": lambda: np.array([d["label"].encode() for _, d in found], object).reshape(-1),
            "image_index": lambda: np.array([image for image, _ in found], np.int32),
        }
        return {name: columns[name]() for name in outputs}


class EmbedOutputs(Outputs):
    names = ("embedding",)
    defaults = names

    def describe(self, described: Mapping[str, Any]) -> dict[str, tuple[str, list[int]]]:
        return {"embedding": ("FP32", [-1, described.get("dim") or -1])}  # [N, dim], L2-normalised

    def tensors(self, answers: Sequence[list[float]], outputs: Requested, params: dict) -> dict[str, np.ndarray]:
        return {"embedding": np.array(answers, np.float32).reshape(len(answers), -1)}


OUTPUTS: dict[str, type[Outputs]] = {"classify": ClassifyOutputs, "detect": DetectOutputs, "embed": EmbedOutputs}


def outputs_for(task: Task) -> Outputs:
    return OUTPUTS[task.name](task)


def validate_class_count(value: Any) -> int:
    """The classification extension's k (Triton's ``class_count``): an integer in 1..MAX_TOP_K."""
    k = value
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    elif isinstance(k, str) and k.strip().isdigit() and len(k.strip()) <= 3:
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise InvalidParameter(f"classification must be an integer between 1 and {MAX_TOP_K}, got {value!r}")
    return k


def _rows(rows: list[list[Any]], dtype) -> np.ndarray:
    return np.array(rows, dtype).reshape(len(rows), -1)


def _bytes_rows(rows: list[list[str]]) -> np.ndarray:
    """Equal-length rows of text -> a [len(rows), width] object array of UTF-8 ``bytes`` (v2 BYTES)."""
    array = np.empty((len(rows), len(rows[0]) if rows else 0), object)
    for r, row in enumerate(rows):
        array[r, :] = [text.encode() for text in row]
    return array
