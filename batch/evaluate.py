"""Accuracy of a classification backfill against its ``label`` column: top-1, top-5, per class.

Labels are ImageNet wnids (``n01440764``) or class names, mapped to class indices through
``shared.labels.class_index_lookup``. Rows with an error, without a label, or with a label the
lookup does not know are left out of the accuracy and counted apart.

The JSON report carries ``"format": "twinfer-evaluation/1"``; an existing file at the report's
location is replaced only if it carries that too (a user's file there is refused, unchanged).
Beside it go a page and a plot (``batch.reports``), under the same rule; the page's confusion
matrix, calibration and worst mistakes are in the JSON too (``batch.eval_details``).
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.ownership import OutputRefused
from batch.resume import output_files
from batch.uris import Resolved, S3Options, is_within, parse_uri, redact_uri, resolve
from shared.labels import class_index_lookup

TOP_KS = (1, 5)
REPORT_FORMAT = "twinfer-evaluation/1"
MAX_REPORT_BYTES = 16 * 1024 * 1024  # a 1000-class report is ~100 kB: larger is not ours


def evaluate_table(table: pa.Table) -> dict:
    """The report for a predictions table (columns ``label``, ``error``, ``top_indices``)."""
    missing = {"label", "error", "top_indices"} - set(table.column_names)
    if missing:
        raise ValueError(f"not a classification predictions table with labels: missing {sorted(missing)}")
    lookup = class_index_lookup()
    excluded = {"errors": 0, "unlabelled": 0, "unknown_label": 0}
    hits = {k: 0 for k in TOP_KS}
    per_class: dict[str, dict] = {}
    shortest_top = None
    for row in table.select(["label", "error", "top_indices"]).to_pylist():
        if row["error"] is not None:
            excluded["errors"] += 1
            continue
        if row["label"] is None:
            excluded["unlabelled"] += 1
            continue
        truth = true_class(lookup, row["label"])
        if truth is None:
            excluded["unknown_label"] += 1
            continue
        predicted = row["top_indices"] or []
        shortest_top = len(predicted) if shortest_top is None else min(shortest_top, len(predicted))
        stats = per_class.setdefault(row["label"], {"count": 0, **{f"top{k}": 0 for k in TOP_KS}})
        stats["count"] += 1
        for k in TOP_KS:
            hit = truth in predicted[:k]
            hits[k] += hit
            stats[f"top{k}"] += hit
    count = sum(s["count"] for s in per_class.values())
    report = {"count": count, **{f"top{k}": _rate(hits[k], count, k, shortest_top) for k in TOP_KS}}
    report["per_class"] = {
        label: {"count": s["count"], **{f"top{k}": _rate(s[f"top{k}"], s["count"], k, shortest_top) for k in TOP_KS}}
        for label, s in sorted(per_class.items())
    }
    report["excluded"] = excluded
    return report


def read_predictions(uri: str, s3: S3Options | None = None) -> pa.Table:
    """All rows of a backfill output (a directory of Parquet files, or one file)."""
    filesystem, files = prediction_files(uri, s3)
    return pa.concat_tables(pq.read_table(f, filesystem=filesystem) for f in files)


def prediction_files(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and the Parquet files of a backfill output: what every reader of an output
    goes through, so none of them knows the output's layout."""
    where = resolve(uri, s3)
    if where.filesystem.get_file_info(where.path).type == pafs.FileType.File:
        files = [where.path]
    else:
        files = output_files(where.filesystem, where.path)
    if not files:
        raise FileNotFoundError(f"no Parquet files in {redact_uri(uri)!r}")
    return where.filesystem, files


def true_class(lookup: dict[str, int], label: str) -> int | None:
    """The class index of a folder label (a wnid or a class name, any case); None if unknown."""
    return lookup.get(label, lookup.get(label.lower()))


def default_report_uri(predictions: str) -> str:
    """Beside the predictions, not inside them (the directory holds only Parquet files)."""
    parts = urlsplit(predictions)  # keep ?endpoint_override=... on the end, where it belongs
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + ".evaluation.json"))


def format_report(report: dict) -> str:
    def pct(value) -> str:
        return "   n/a" if value is None else f"{100 * value:6.2f}"

    width = max([len("overall"), *(len(label) for label in report["per_class"])])
    lines = [f"{'class':<{width}}  {'count':>6}  {'top-1 %':>7}  {'top-5 %':>7}"]
    for label, s in report["per_class"].items():
        lines.append(f"{label:<{width}}  {s['count']:>6}  {pct(s['top1']):>7}  {pct(s['top5']):>7}")
    lines.append(f"{'overall':<{width}}  {report['count']:>6}  {pct(report['top1']):>7}  {pct(report['top5']):>7}")
    excluded = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in report["excluded"].items())
    lines.append(f"excluded: {excluded}")
    return "\n".join(lines)


def run_evaluate(predictions: str, output: str | None = None, s3: S3Options | None = None) -> dict:
    """Evaluate ``predictions``, write the JSON report (default: beside them), its page and its
    plot (``batch.reports``), and print the table."""
    from batch import eval_details, reports  # they import this module

    report_uri = output or default_report_uri(predictions)
    where = resolve(report_uri, s3)
    if is_within(where.location, parse_uri(predictions)):
        raise OutputRefused(
            f"the report {redact_uri(report_uri)} must not be inside the predictions folder {redact_uri(predictions)}"
        )
    check_report_targets(report_uri, s3)
    table = read_predictions(predictions, s3)
    report = {"format": REPORT_FORMAT, "predictions": redact_uri(predictions), **evaluate_table(table)}
    if set(eval_details.COLUMNS) <= set(table.column_names):
        report.update(eval_details.evaluation_details(table.to_batches()))
    if where.location.scheme == "local":  # object stores have no directories to make
        where.filesystem.create_dir(posixpath.dirname(where.path), recursive=True)
    with where.filesystem.open_output_stream(where.path) as stream:
        stream.write(json.dumps(report, indent=2).encode())
    written = reports.write_reports(report, report_uri, s3)
    print(format_report(report))
    print(
        f"evaluation: top-1 {_fmt(report['top1'])}, top-5 {_fmt(report['top5'])} "
        f"over {report['count']} images -> {redact_uri(report_uri)} ({', '.join(redact_uri(u) for u in written)})"
    )
    return {**report, "report": redact_uri(report_uri)}


def check_report_targets(report_uri: str, s3: S3Options | None = None) -> None:
    """Refuse (``OutputRefused``) an evaluation's locations, the JSON's and its page's and plot's,
    when any holds a file twinfer did not write."""
    from batch import reports

    check_report_target(resolve(report_uri, s3), report_uri)
    reports.check_targets(report_uri, s3)


def check_report_target(where: Resolved, uri: str, report_format: str = REPORT_FORMAT) -> None:
    """Refuse a report location holding anything but a twinfer report of ``report_format``
    (``OutputRefused``)."""
    info = where.filesystem.get_file_info(where.path)
    if info.type == pafs.FileType.NotFound:
        return
    content = None
    if info.type == pafs.FileType.File and info.size is not None and info.size <= MAX_REPORT_BYTES:
        with where.filesystem.open_input_stream(where.path) as stream:
            try:
                content = json.loads(stream.read())
            except ValueError:
                pass
    if not isinstance(content, dict) or content.get("format") != report_format:
        what = report_format.split("/")[0].removeprefix("twinfer-")  # "evaluation", "comparison"
        raise OutputRefused(
            f"{redact_uri(uri)} exists and is not a twinfer {what} report; nothing was written. "
            "Choose another report location (--evaluation-output / --output)"
        )


def _rate(hits: int, count: int, k: int, shortest_top: int | None) -> float | None:
    """hits / count; None when nothing was counted or the backfill kept fewer than k predictions."""
    if count == 0 or shortest_top is None or shortest_top < k:
        return None
    return hits / count


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
