"""Bounded accumulators the evaluation and comparison reports share, fed a batch of rows at a time.

Each holds what its figure needs and nothing per row: a reliability diagram (``Reliability``:
ten confidence bins), class-pair counts for a confusion matrix (``PairCounts``: at most classes²
entries) and the rows worth a look (``Examples``: the N with the largest key).
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.evaluate import true_class
from shared.labels import class_index_lookup, imagenet_categories

CALIBRATION_BINS = 10
EXAMPLES = 24  # rows shown with a thumbnail
CONFUSION_CLASSES = 20  # the most frequent classes a confusion matrix shows
UNKNOWN = -1  # the class index of a label the lookup does not know


class Reliability:
    """Confidence (the top-1 score) against accuracy, in equal-width bins over [0, 1]."""

    def __init__(self, bins: int = CALIBRATION_BINS):
        self.bins = bins
        self.count = np.zeros(bins, np.int64)
        self.confidence = np.zeros(bins, np.float64)
        self.hits = np.zeros(bins, np.int64)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        which = np.clip((confidence * self.bins).astype(np.int64), 0, self.bins - 1)
        self.count += np.bincount(which, minlength=self.bins)
        self.confidence += np.bincount(which, weights=confidence, minlength=self.bins)
        self.hits += np.bincount(which, weights=correct.astype(np.int64), minlength=self.bins).astype(np.int64)

    def result(self) -> dict:
        """Per bin: its bounds, rows, mean confidence and accuracy (None when empty); and the
        expected calibration error, sum over bins of |accuracy - confidence| x rows / all rows."""
        total = int(self.count.sum())
        bins, ece = [], 0.0
        for i in range(self.bins):
            n = int(self.count[i])
            confidence = float(self.confidence[i] / n) if n else None
            accuracy = float(self.hits[i] / n) if n else None
            if n:
                ece += abs(accuracy - confidence) * n / total
            bins.append(
                {
                    "lower": i / self.bins,
                    "upper": (i + 1) / self.bins,
                    "count": n,
                    "confidence": confidence,
                    "accuracy": accuracy,
                }
            )
        return {"bins": bins, "count": total, "ece": ece if total else None}


class PairCounts:
    """How often class x went with class y (truth and prediction, or model A's top-1 and B's)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        pairs, counts = np.unique(np.stack([x, y], axis=1), axis=0, return_counts=True)
        for (i, j), n in zip(pairs.tolist(), counts.tolist()):
            self.counts[(i, j)] = self.counts.get((i, j), 0) + n

    def confusion(self, names: Callable[[int], str], classes: int = CONFUSION_CLASSES, same: bool = True) -> dict:
        """The matrix over the ``classes`` most frequent x classes (rows). Columns: the same
        classes when ``same`` (truth against prediction: the diagonal is right), else the
        ``classes`` most frequent y classes; and one more column for every other y."""
        rows = _most_frequent(self.counts, 0, classes)
        columns = rows if same else _most_frequent(self.counts, 1, classes)
        at = {c: k for k, c in enumerate(columns)}
        matrix = [[0] * (len(columns) + 1) for _ in rows]
        index = {c: k for k, c in enumerate(rows)}
        for (x, y), n in self.counts.items():
            if x in index:
                matrix[index[x]][at.get(y, len(columns))] += n
        return {"classes": [names(i) for i in rows], "columns": [names(i) for i in columns], "matrix": matrix}

    def changes(self, names: Callable[[int], str], top: int = CONFUSION_CLASSES) -> list[dict]:
        """The most frequent pairs with x != y."""
        pairs = sorted(((n, x, y) for (x, y), n in self.counts.items() if x != y), key=lambda t: (-t[0], t[1], t[2]))
        return [{"a": names(x), "b": names(y), "count": n} for n, x, y in pairs[:top]]


def _most_frequent(counts: dict[tuple[int, int], int], side: int, top: int) -> list[int]:
    totals: dict[int, int] = {}
    for pair, n in counts.items():
        totals[pair[side]] = totals.get(pair[side], 0) + n
    return sorted(totals, key=lambda c: (-totals[c], c))[:top]


def label_name(label: str) -> str:
    """A folder label as a person reads it: a wnid with its class name."""
    index = true_class(class_index_lookup(), label)
    if index is None or label.lower() == imagenet_categories()[index].lower():
        return label
    return f"{label} {imagenet_categories()[index]}"


class Examples:
    """The ``size`` rows with the largest (key, tiebreak) offered so far."""

    def __init__(self, size: int = EXAMPLES):
        self.size = size
        self._heap: list[tuple[float, int, dict]] = []

    def offer(self, keys: np.ndarray, tiebreak: np.ndarray, row: Callable[[int], dict]) -> None:
        """``row(i)`` builds the i-th row's record, only for rows that may be kept."""
        if not len(keys):
            return
        order = np.lexsort((tiebreak, keys))[::-1][: self.size]  # largest first
        for i in order.tolist():
            entry = (float(keys[i]), int(tiebreak[i]))
            if len(self._heap) == self.size and entry <= self._heap[0][:2]:
                break  # the rest of this batch is smaller still
            item = (*entry, row(i))
            if len(self._heap) < self.size:
                heapq.heappush(self._heap, item)
            else:
                heapq.heapreplace(self._heap, item)

    def result(self) -> list[dict]:
        return [record for _, _, record in sorted(self._heap, key=lambda t: (t[0], t[1]), reverse=True)]


class ClassNames:
    """Class index -> name: the names the predictions carry, else ImageNet's (the labels are
    looked up in ImageNet's classes), else ``class_<i>``."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def learn(self, indices: np.ndarray, labels: pa.Array) -> None:
        unique, first = np.unique(indices, return_index=True)
        for index, at in zip(unique.tolist(), first.tolist()):
            if index not in self.names:
                self.names[index] = labels[at].as_py()

    def __call__(self, index: int) -> str:
        if index in self.names:
            return self.names[index]
        categories = imagenet_categories()
        return categories[index] if 0 <= index < len(categories) else f"class_{index}"


def true_classes(labels: pa.Array) -> np.ndarray:
    """The class index of each folder label (``UNKNOWN`` for labels the lookup does not know or
    nulls), looked up once per distinct label."""
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    encoded = pc.dictionary_encode(labels)
    lookup = class_index_lookup()
    known = [true_class(lookup, label) for label in encoded.dictionary.to_pylist()]
    table = np.array([UNKNOWN if k is None else k for k in known] + [UNKNOWN], np.int64)
    codes = encoded.indices.fill_null(len(known)).to_numpy(zero_copy_only=False)
    return table[codes]


def top1(column: pa.Array) -> np.ndarray:
    """The first element of each list (rows must have one)."""
    return pc.list_element(column, 0).to_numpy(zero_copy_only=False)
