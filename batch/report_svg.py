"""Inline SVG charts and the number format of the report pages.

Every number a page shows from its report is written by ``number``: its text is ``fmt(value,
kind)`` and the element carries ``data-field`` (the value's JSON pointer, RFC 6901, in the
report) and ``data-format`` (the kind), so a reader, or a test, can tie each figure to the JSON.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

BAR_HEIGHT = 16
LABEL_WIDTH = 220
PLOT_WIDTH = 360
SERIES = ("a", "b")  # CSS classes of the two sides' marks


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def fmt(value: Any, kind: str) -> str:
    """``pct``: a share as a percentage with two decimals; ``num``: four decimals; ``int``: as is."""
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "num":
        return f"{value:.4f}"
    return str(value)


def pointer(keys: Sequence[Any]) -> str:
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def lookup(report: dict, keys: Sequence[Any]) -> Any:
    value = report
    for key in keys:
        value = value[key]
    return value


def number(report: dict, keys: Sequence[Any], kind: str, tag: str = "span", attrs: str = "") -> str:
    """The value at ``keys`` in ``report``, formatted, in a ``tag`` that says where it came from."""
    text = fmt(lookup(report, keys), kind)
    return f'<{tag} {attrs} data-field="{esc(pointer(keys))}" data-format="{kind}">{esc(text)}</{tag}>'


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{esc(title)}</title>{body}</svg>'
    )


def bars(report: dict, rows: list[tuple[str, list[Sequence[Any]]]], title: str, kind: str = "pct") -> str:
    """Horizontal bars: per row a label and one bar per series (keys of each value in ``report``);
    values are shares (0..1) for ``pct``, else scaled to the largest."""
    values = [lookup(report, keys) or 0 for _, series in rows for keys in series]
    top = 1.0 if kind == "pct" else max(values, default=0) or 1
    per_row = max((len(series) for _, series in rows), default=1)
    row_height = BAR_HEIGHT * per_row + 6
    body = []
    for r, (label, series) in enumerate(rows):
        y = r * row_height
        body.append(f'<text class="label" x="{LABEL_WIDTH - 6}" y="{y + row_height / 2 + 4}">{esc(label)}</text>')
        for s, keys in enumerate(series):
            value = lookup(report, keys)
            width = PLOT_WIDTH * (value or 0) / top
            top_y = y + s * BAR_HEIGHT
            body.append(
                f'<rect class="bar {SERIES[s % 2]}" x="{LABEL_WIDTH}" y="{top_y + 1}" '
                f'width="{width:.1f}" height="{BAR_HEIGHT - 2}"/>'
            )
            body.append(
                number(report, keys, kind, "text", f'class="value" x="{LABEL_WIDTH + width + 4:.1f}" y="{top_y + 12}"')
            )
    return _svg(LABEL_WIDTH + PLOT_WIDTH + 80, max(1, len(rows)) * row_height, "".join(body), title)


def heatmap(report: dict, keys: Sequence[Any], row_title: str, column_title: str) -> str:
    """A confusion matrix (``{"classes", "columns", "matrix"}`` at ``keys``; the last column is
    "other"); each cell's shade is its share of its row, and cells where the row's class and the
    column's are one are outlined."""
    confusion = lookup(report, keys)
    classes, matrix = confusion["classes"], confusion["matrix"]
    cell, left, top = 30, 170, 150
    names = [*confusion["columns"], "other"]
    body = [f'<text class="axis" x="{left}" y="14">{esc(column_title)} &#8594;</text>']
    body.append(f'<text class="axis" x="4" y="{top - 6}">{esc(row_title)} &#8595;</text>')
    for j, name in enumerate(names):
        x = left + j * cell + cell / 2
        body.append(
            f'<text class="column" transform="translate({x + 4},{top - 6}) rotate(-60)">{esc(name[:24])}</text>'
        )
    for i, row in enumerate(matrix):
        y = top + i * cell
        total = sum(row) or 1
        body.append(f'<text class="label" x="{left - 6}" y="{y + cell / 2 + 4}">{esc(classes[i][:26])}</text>')
        for j, count in enumerate(row):
            x = left + j * cell
            shade = count / total
            diagonal = " diagonal" if classes[i] == names[j] else ""
            body.append(
                f'<rect class="cell{diagonal}" x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill-opacity="{0.08 + 0.92 * shade:.3f}"><title>{esc(classes[i])} &#8594; {esc(names[j])}: '
                f"{count}</title></rect>"
            )
            if count:
                attrs = f'class="count{" dark" if shade > 0.5 else ""}" x="{x + cell / 2}" y="{y + cell / 2 + 4}"'
                body.append(number(report, [*keys, "matrix", i, j], "int", "text", attrs))
    width = left + len(names) * cell + 10
    return _svg(width, top + len(matrix) * cell + 10, "".join(body), f"{row_title} against {column_title}")


def reliability(report: dict, series: list[tuple[str, Sequence[Any]]]) -> str:
    """Reliability diagram: accuracy against mean confidence per bin, one series per calibration
    result (``{"bins": [...]}`` at each keys), with the diagonal of perfect calibration."""
    size, pad = 260, 36
    body = [
        f'<rect class="frame" x="{pad}" y="10" width="{size}" height="{size}"/>',
        f'<line class="ideal" x1="{pad}" y1="{10 + size}" x2="{pad + size}" y2="10"/>',
        f'<text class="axis" x="{pad + size / 2}" y="{size + 40}">confidence (top-1 score)</text>',
        f'<text class="axis" transform="translate(12,{10 + size / 2}) rotate(-90)">accuracy</text>',
    ]
    for s, (_, keys) in enumerate(series):
        bins = lookup(report, keys)["bins"]
        width = size / len(bins) / len(series)
        for b, entry in enumerate(bins):
            if not entry["count"]:
                continue
            height = size * entry["accuracy"]
            x = pad + size * entry["lower"] + s * width
            body.append(
                f'<rect class="bar {SERIES[s % 2]}" x="{x:.1f}" y="{10 + size - height:.1f}" width="{width - 1:.1f}" '
                f'height="{height:.1f}"><title>{entry["count"]} rows, confidence {fmt(entry["confidence"], "num")}, '
                f"accuracy {fmt(entry['accuracy'], 'num')}</title></rect>"
            )
    for t in range(0, 11, 2):
        body.append(f'<text class="tick" x="{pad + size * t / 10}" y="{size + 24}">{t / 10:.1f}</text>')
        body.append(f'<text class="tick" x="{pad - 16}" y="{10 + size - size * t / 10 + 4}">{t / 10:.1f}</text>')
    return _svg(size + pad + 20, size + 50, "".join(body), "reliability diagram")


def histogram(report: dict, keys: Sequence[Any], xlabel: str) -> str:
    """Counts per bin (``{"edges", "counts"}`` at ``keys``)."""
    data = lookup(report, keys)
    edges, counts = data["edges"], data["counts"]
    width, height, pad = 420, 160, 30
    top = max(counts, default=0) or 1
    step = width / max(1, len(counts))
    body = [f'<line class="ideal" x1="{pad}" y1="{height}" x2="{pad + width}" y2="{height}"/>']
    for i, count in enumerate(counts):
        h = (height - 20) * count / top
        x = pad + i * step
        body.append(
            f'<rect class="bar a" x="{x:.1f}" y="{height - h:.1f}" width="{step - 1:.1f}" height="{h:.1f}">'
            f"<title>[{edges[i]:.4g}, {edges[i + 1]:.4g}): {count}</title></rect>"
        )
        if count:
            attrs = f'class="value" x="{x + step / 2:.1f}" y="{height - h - 3:.1f}"'
            body.append(number(report, [*keys, "counts", i], "int", "text", attrs))
    for i in range(0, len(edges), max(1, len(edges) // 5)):
        body.append(f'<text class="tick" x="{pad + i * step:.1f}" y="{height + 16}">{edges[i]:.4g}</text>')
    body.append(f'<text class="axis" x="{pad + width / 2}" y="{height + 34}">{esc(xlabel)}</text>')
    return _svg(width + 2 * pad, height + 42, "".join(body), xlabel)
