"""What ``twinfer compare`` measures for each task, over rows both outputs answered without error.

A comparer is fed aligned pairs of record batches (row i of ``a`` and of ``b`` are the same
input) and keeps bounded state only: counters, fixed histograms, class tables (at most classes
or classes² entries) and the ``EXAMPLES`` biggest disagreements.

- classify: top-1 agreement, top-k overlap, top-1 score shifts (B - A), A's top-1 against B's
  (a confusion matrix and the most frequent changes); with folder labels, each side's accuracy,
  the flips (A right -> B wrong and back) overall and per class, and both reliability diagrams.
- detect: boxes matched across the two sides greedily by IoU (class-agnostic, A's boxes by
  descending score, each B box used once, IoU >= ``IOU_MATCH``), their IoU and score shifts,
  label changes of matched boxes, and boxes only one side found.
- embed: the cosine between the two vectors of each input; vectors of different widths are not
  compared (the report says so).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.report_stats import UNKNOWN, ClassNames, Examples, PairCounts, Reliability, top1, true_classes

IOU_MATCH = 0.5
SHIFT_EDGES = np.linspace(-1.0, 1.0, 21)  # score shifts, B - A
IOU_EDGES = np.linspace(IOU_MATCH, 1.0, 11)
COSINE_LEVELS = (0.9, 0.99, 0.999, 0.9999)  # the share of inputs whose cosine is at least each
COSINE_EDGES = np.array([-1.0, 0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0 + 1e-9])
BOXES_SHOWN = 20  # per side, on an example's thumbnail


class Comparer:
    task: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # prediction columns read from each side

    def __init__(self, schema_a: pa.Schema, schema_b: pa.Schema):
        self.examples = Examples()
        self.compared = 0

    def add(self, a: pa.Table, b: pa.Table, paths: pa.Array, labels: pa.Array, tiebreak: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(np.int64)


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


class ClassifyComparer(Comparer):
    task = "classify"
    columns = ("top_indices", "top_scores", "top_labels")
    COUNTERS = ("count", "agree", "a_right", "b_right", "a_right_b_wrong", "a_wrong_b_right")

    def __init__(self, schema_a: pa.Schema, schema_b: pa.Schema):
        super().__init__(schema_a, schema_b)
        self.names = ClassNames()
        self.agree = 0
        self.overlap, self.k = 0.0, None
        self.shift_sum = self.shift_abs = self.same_abs = 0.0
        self.same_max = 0.0
        self.shifts = np.zeros(len(SHIFT_EDGES) - 1, np.int64)
        self.pairs = PairCounts()
        self.by_a_class: dict[int, np.ndarray] = {}  # A's top-1 -> [count, agree]
        self.per_label: dict[str, np.ndarray] = {}  # folder label -> COUNTERS
        self.truth_of: dict[str, int] = {}
        self.reliability = {"a": Reliability(), "b": Reliability()}

    def add(self, a: pa.Table, b: pa.Table, paths: pa.Array, labels: pa.Array, tiebreak: np.ndarray) -> None:
        n = a.num_rows
        a1, b1 = top1(a.column("top_indices")), top1(b.column("top_indices"))
        sa, sb = top1(a.column("top_scores")), top1(b.column("top_scores"))
        self.names.learn(a1, pc.list_element(a.column("top_labels"), 0))
        self.names.learn(b1, pc.list_element(b.column("top_labels"), 0))
        agree = a1 == b1
        self.compared += n
        self.agree += int(agree.sum())
        self._overlap(a.column("top_indices"), b.column("top_indices"))
        shift = sb - sa
        self.shift_sum += float(shift.sum())
        self.shift_abs += float(np.abs(shift).sum())
        self.shifts += _histogram(shift, SHIFT_EDGES)
        if agree.any():
            same = np.abs(shift[agree])
            self.same_abs += float(same.sum())
            self.same_max = max(self.same_max, float(same.max()))
        self.pairs.add(a1, b1)
        _add_rows(self.by_a_class, a1.tolist(), np.stack([np.ones(n), agree], axis=1))
        truth = true_classes(labels)
        right_a, right_b = a1 == truth, b1 == truth
        labelled = truth != UNKNOWN
        if labelled.any():
            counters = np.stack(
                [np.ones(n), agree, right_a, right_b, right_a & ~right_b, ~right_a & right_b], axis=1
            ).astype(np.int64)
            keys = labels.filter(pa.array(labelled)).to_pylist()
            _add_rows(self.per_label, keys, counters[labelled])
            for key, index in zip(keys, truth[labelled].tolist()):
                self.truth_of.setdefault(key, index)
            self.reliability["a"].add(sa[labelled], right_a[labelled])
            self.reliability["b"].add(sb[labelled], right_b[labelled])
        differ = np.flatnonzero(~agree)

        def example(i: int) -> dict:
            at = int(differ[i])
            record = {
                "path": paths[at].as_py(),
                "label": labels[at].as_py(),
                "a": self.names(int(a1[at])),
                "a_score": float(sa[at]),
                "b": self.names(int(b1[at])),
                "b_score": float(sb[at]),
            }
            if labelled[at]:
                record.update(a_right=bool(right_a[at]), b_right=bool(right_b[at]))
            return record

        # the most confident disagreements: both sides sure, of different classes
        self.examples.offer(np.minimum(sa, sb)[differ], tiebreak[differ], example)

    def _overlap(self, a: pa.ChunkedArray, b: pa.ChunkedArray) -> None:
        k = int(min(pc.min(pc.list_value_length(a)).as_py(), pc.min(pc.list_value_length(b)).as_py()))
        self.k = k if self.k is None else min(self.k, k)
        if k == 0:
            return

        def matrix(column: pa.ChunkedArray) -> np.ndarray:
            values = pc.list_flatten(pc.list_slice(column, 0, k)).to_numpy(zero_copy_only=False)
            return values.reshape(-1, k)

        ma, mb = matrix(a), matrix(b)
        self.overlap += float((ma[:, :, None] == mb[:, None, :]).any(axis=2).sum() / k)

    def result(self) -> dict:
        n = self.compared
        labelled = {key: dict(zip(self.COUNTERS, row.tolist())) for key, row in sorted(self.per_label.items())}
        count = sum(c["count"] for c in labelled.values())
        report = {
            "top1_agreement": _mean(self.agree, n),
            "k": self.k,
            "topk_overlap": _mean(self.overlap, n),
            "score_shift": {
                "mean": _mean(self.shift_sum, n),
                "mean_abs": _mean(self.shift_abs, n),
                "same_class_mean_abs": _mean(self.same_abs, self.agree),
                "same_class_max_abs": self.same_max if self.agree else None,
                "histogram": {"edges": SHIFT_EDGES.tolist(), "counts": self.shifts.tolist()},
            },
            "by_a_class": {
                self.names(i): {"count": int(row[0]), "agreement": float(row[1] / row[0])}
                for i, row in sorted(self.by_a_class.items(), key=lambda kv: (-kv[1][0], kv[0]))
            },
            "confusion": self.pairs.confusion(self.names, same=False),
            "changes": self.pairs.changes(self.names),
            "labelled": count,
        }
        if count:
            total = {name: sum(c[name] for c in labelled.values()) for name in self.COUNTERS}
            report["accuracy"] = {"a": total["a_right"] / count, "b": total["b_right"] / count}
            report["flips"] = {"a_right_b_wrong": total["a_right_b_wrong"], "a_wrong_b_right": total["a_wrong_b_right"]}
            report["per_class"] = {
                key: {
                    "class": self.names(self.truth_of[key]),
                    **c,
                    "agreement": c["agree"] / c["count"],
                    "a_top1": c["a_right"] / c["count"],
                    "b_top1": c["b_right"] / c["count"],
                }
                for key, c in labelled.items()
            }
            report["calibration"] = {side: r.result() for side, r in self.reliability.items()}
        return report


def _add_rows(table: dict, keys: list, rows: np.ndarray) -> None:
    """table[key] += row, for each key and row."""
    unique, inverse = np.unique(np.array(keys, dtype=object), return_inverse=True)
    sums = np.zeros((len(unique), rows.shape[1]), np.int64)
    np.add.at(sums, inverse.reshape(-1), rows.astype(np.int64))
    for key, row in zip(unique.tolist(), sums):
        table[key] = table.get(key, 0) + row


class DetectComparer(Comparer):
    task = "detect"
    columns = ("boxes", "labels", "label_indices", "scores")

    def __init__(self, schema_a: pa.Schema, schema_b: pa.Schema):
        super().__init__(schema_a, schema_b)
        self.names = ClassNames()
        self.boxes = {"a": 0, "b": 0}
        self.matched = self.label_changes = self.identical = 0
        self.iou_sum = self.shift_sum = self.shift_abs = 0.0
        self.ious = np.zeros(len(IOU_EDGES) - 1, np.int64)
        self.pairs = PairCounts()

    def add(self, a: pa.Table, b: pa.Table, paths: pa.Array, labels: pa.Array, tiebreak: np.ndarray) -> None:
        rows_a, rows_b = a.to_pylist(), b.to_pylist()
        keys = np.zeros(len(rows_a))
        records = []
        for row_index, (ra, rb) in enumerate(zip(rows_a, rows_b)):
            for side, row in (("a", ra), ("b", rb)):
                self.names.names.update(zip(row["label_indices"], row["labels"]))
                self.boxes[side] += len(row["boxes"])
            pairs = match_boxes(ra["boxes"], ra["scores"], rb["boxes"])
            changed = sum(ra["label_indices"][i] != rb["label_indices"][j] for i, j, _ in pairs)
            unmatched = len(ra["boxes"]) + len(rb["boxes"]) - 2 * len(pairs)
            self.matched += len(pairs)
            self.label_changes += changed
            self.identical += unmatched == 0 and changed == 0
            ious = np.array([iou for _, _, iou in pairs])
            shifts = np.array([rb["scores"][j] - ra["scores"][i] for i, j, _ in pairs])
            self.iou_sum += float(ious.sum())
            self.ious += _histogram(ious, IOU_EDGES)
            self.shift_sum += float(shifts.sum())
            self.shift_abs += float(np.abs(shifts).sum())
            if pairs:
                self.pairs.add(
                    np.array([ra["label_indices"][i] for i, _, _ in pairs]),
                    np.array([rb["label_indices"][j] for _, j, _ in pairs]),
                )
            keys[row_index] = unmatched + changed
            records.append((ra, rb, unmatched, changed, float(ious.mean()) if pairs else None))
        self.compared += len(rows_a)

        def example(i: int) -> dict:
            ra, rb, unmatched, changed, mean_iou = records[i]
            return {
                "path": paths[i].as_py(),
                "label": labels[i].as_py(),
                "unmatched": unmatched,
                "label_changes": changed,
                "mean_iou": mean_iou,
                "a_boxes": _shown_boxes(ra),
                "b_boxes": _shown_boxes(rb),
            }

        differ = np.flatnonzero(keys > 0)
        self.examples.offer(keys[differ], tiebreak[differ], lambda i: example(int(differ[i])))

    def result(self) -> dict:
        return {
            "iou_match": IOU_MATCH,
            "boxes_a": self.boxes["a"],
            "boxes_b": self.boxes["b"],
            "matched": self.matched,
            "only_a": self.boxes["a"] - self.matched,
            "only_b": self.boxes["b"] - self.matched,
            "label_changes": self.label_changes,
            "identical_images": self.identical,
            "mean_iou": _mean(self.iou_sum, self.matched),
            "iou_histogram": {"edges": IOU_EDGES.tolist(), "counts": self.ious.tolist()},
            "score_shift": {
                "mean": _mean(self.shift_sum, self.matched),
                "mean_abs": _mean(self.shift_abs, self.matched),
            },
            "confusion": self.pairs.confusion(self.names, same=False),
            "changes": self.pairs.changes(self.names),
        }


def _shown_boxes(row: dict) -> list[dict]:
    order = np.argsort(row["scores"])[::-1][:BOXES_SHOWN]
    return [{"box": row["boxes"][i], "label": row["labels"][i], "score": row["scores"][i]} for i in order.tolist()]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4, x1 y1 x2 y2) with every box in ``b`` (M x 4)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(boxes_a: list, scores_a: list, boxes_b: list, threshold: float = IOU_MATCH) -> list:
    """Greedy one-to-one matches ``(i, j, iou)``: A's boxes by descending score, each taking the
    free B box of highest IoU, when that IoU is at least ``threshold``."""
    if not boxes_a or not boxes_b:
        return []
    iou = box_iou(np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64))
    free = np.ones(len(boxes_b), bool)
    matches = []
    for i in np.argsort(-np.asarray(scores_a), kind="stable").tolist():
        candidates = np.where(free, iou[i], -1.0)
        j = int(candidates.argmax())
        if candidates[j] >= threshold:
            free[j] = False
            matches.append((i, j, float(iou[i, j])))
    return matches


class EmbedComparer(Comparer):
    task = "embed"
    columns = ("embedding",)

    def __init__(self, schema_a: pa.Schema, schema_b: pa.Schema):
        super().__init__(schema_a, schema_b)
        self.dims = (schema_a.field("embedding").type.list_size, schema_b.field("embedding").type.list_size)
        self.sum, self.min, self.max = 0.0, None, None
        self.histogram = np.zeros(len(COSINE_EDGES) - 1, np.int64)
        self.at_least = np.zeros(len(COSINE_LEVELS), np.int64)

    @property
    def comparable(self) -> bool:
        return self.dims[0] == self.dims[1]

    def add(self, a: pa.Table, b: pa.Table, paths: pa.Array, labels: pa.Array, tiebreak: np.ndarray) -> None:
        self.compared += a.num_rows
        if not self.comparable or not a.num_rows:
            return
        va, vb = _vectors(a.column("embedding"), self.dims[0]), _vectors(b.column("embedding"), self.dims[1])
        norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
        cosine = np.einsum("ij,ij->i", va, vb) / np.where(norms > 0, norms, 1.0)
        self.sum += float(cosine.sum())
        low, high = float(cosine.min()), float(cosine.max())
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        self.histogram += _histogram(cosine, COSINE_EDGES)
        self.at_least += np.array([(cosine >= level).sum() for level in COSINE_LEVELS], np.int64)

        def example(i: int) -> dict:
            return {"path": paths[i].as_py(), "label": labels[i].as_py(), "cosine": float(cosine[i])}

        self.examples.offer(-cosine, tiebreak, example)  # the least alike first

    def result(self) -> dict:
        report = {"dim_a": self.dims[0], "dim_b": self.dims[1], "comparable": self.comparable}
        if not self.comparable:
            report["note"] = (
                f"the embeddings have different dimensions (A {self.dims[0]}, B {self.dims[1]}): "
                "their vectors live in different spaces and are not compared"
            )
            return report
        n = self.compared
        edges = COSINE_EDGES.tolist()
        edges[-1] = 1.0
        report["cosine"] = {
            "mean": _mean(self.sum, n),
            "min": self.min,
            "max": self.max,
            "at_least": {str(level): _mean(int(c), n) for level, c in zip(COSINE_LEVELS, self.at_least)},
            "histogram": {"edges": edges, "counts": self.histogram.tolist()},
        }
        return report


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.astype(np.float64).reshape(-1, dim)


COMPARERS: dict[str, type[Comparer]] = {c.task: c for c in (ClassifyComparer, DetectComparer, EmbedComparer)}
