"""What the evaluation's page shows beyond the accuracy table: the confusion matrix of the most
frequent classes, the reliability of the top-1 score, and the most confident mistakes.

Counted over the same rows as the accuracy (no error, a label the lookup knows), a record batch
at a time, holding only bounded accumulators (``batch.report_stats``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.report_stats import UNKNOWN, ClassNames, Examples, PairCounts, Reliability, top1, true_classes

COLUMNS = ("path", "label", "error", "top_indices", "top_scores", "top_labels")


def evaluation_details(batches: Iterable[pa.RecordBatch]) -> dict:
    """``confusion`` (truth rows x top-1 columns), ``calibration`` and ``worst`` (the most
    confident wrong top-1 answers: path, label, predicted class and score)."""
    reliability, pairs, worst, names = Reliability(), PairCounts(), Examples(), ClassNames()
    seen = 0
    for batch in batches:
        batch = batch.filter(pc.and_(pc.is_null(batch.column("error")), pc.is_valid(batch.column("label"))))
        truth = true_classes(batch.column("label"))
        batch = batch.filter(pa.array(truth != UNKNOWN))
        truth = truth[truth != UNKNOWN]
        if not batch.num_rows:
            continue
        predicted = top1(batch.column("top_indices"))
        score = top1(batch.column("top_scores"))
        names.learn(predicted, pc.list_element(batch.column("top_labels"), 0))
        correct = predicted == truth
        reliability.add(score, correct)
        pairs.add(truth, predicted)
        wrong = np.flatnonzero(~correct)
        paths, labels = batch.column("path"), batch.column("label")

        def mistake(i: int, wrong=wrong, paths=paths, labels=labels, predicted=predicted, score=score) -> dict:
            at = int(wrong[i])
            return {
                "path": paths[at].as_py(),
                "label": labels[at].as_py(),
                "predicted": names(int(predicted[at])),
                "score": float(score[at]),
            }

        worst.offer(score[wrong], seen + wrong, mistake)
        seen += batch.num_rows
    return {"confusion": pairs.confusion(names), "calibration": reliability.result(), "worst": worst.result()}
