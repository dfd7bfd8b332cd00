"""One self-contained HTML page for an evaluation or a comparison report.

Inline CSS and SVG, thumbnails as data: URIs, no script and nothing fetched: it opens from disk,
from an object store's download, or attached to a ticket. Every figure on it comes from the
report's JSON, written by ``batch.report_svg.number`` (which says where in the JSON it is).
Long lists are cut to the ``SHOWN_CLASSES`` classes with the most rows; the JSON has them all.
"""

from __future__ import annotations

from batch.report_stats import label_name
from batch.report_svg import bars, esc, heatmap, histogram, number, reliability
from batch.reports import HTML_MARKER
from batch.thumbnails import THUMBNAIL_SIDE

SHOWN_CLASSES = 30
SHOWN_CHANGES = 15

CSS = """
:root { --a: #3b6fb6; --b: #e08a2c; --ink: #1d2330; --muted: #5d6677; --line: #d9dde5; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--ink); margin: 24px auto; max-width: 1180px;
  padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 130px; }
.card .k { color: var(--muted); font-size: 12px; }
.card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
svg text { font: 11px system-ui, sans-serif; fill: var(--ink); }
svg .label { text-anchor: end; }
svg .axis { fill: var(--muted); }
svg .tick { text-anchor: middle; fill: var(--muted); }
svg .count { text-anchor: middle; font-size: 10px; }
svg .count.dark { fill: #fff; }
svg .value { font-size: 10px; }
svg .bar.a, svg .cell { fill: var(--a); }
svg .bar.b { fill: var(--b); }
svg .cell.diagonal { stroke: var(--ink); }
svg .frame { fill: none; stroke: var(--line); }
svg .ideal { stroke: var(--muted); stroke-dasharray: 4 3; }
svg .box.a { fill: none; stroke: var(--a); stroke-width: 2; }
svg .box.b { fill: none; stroke: var(--b); stroke-width: 2; stroke-dasharray: 5 3; }
.legend .a { color: var(--a); }
.legend .b { color: var(--b); }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: SIDEpx; font-size: 12px; }
figure .pic { position: relative; width: SIDEpx; height: SIDEpx; display: flex; align-items: center;
  justify-content: center; background: #f3f4f7; }
figure img { display: block; max-width: SIDEpx; max-height: SIDEpx; }
figure svg { position: absolute; }
figure .missing { color: var(--muted); padding: 6px; word-break: break-all; }
figcaption { word-break: break-all; }
.right { color: #2c7a3f; }
.wrong { color: #b3261e; }
""".replace("SIDE", str(THUMBNAIL_SIDE))


def render_page(report: dict, pictures: dict[str, dict]) -> str:
    """The page for ``report`` (its ``format`` says which); ``pictures``: path -> thumbnail."""
    if report["format"].startswith("twinfer-comparison/"):
        title, body = f"Comparison ({report['task']}): A vs B", _comparison(report, pictures)
    else:
        title, body = "Evaluation", _evaluation(report, pictures)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        + HTML_MARKER.decode()
        + '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + f"<title>twinfer: {esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + f"<h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def _card(report: dict, title: str, keys: list, kind: str) -> str:
    return f'<div class="card"><div class="k">{esc(title)}</div>{number(report, keys, kind, "div", "class=v")}</div>'


def _cards(report: dict, items: list[tuple[str, list, str]]) -> str:
    return '<div class="cards">' + "".join(_card(report, *item) for item in items) + "</div>"


# ---- evaluation -----------------------------------------------------------------------------------
def _evaluation(report: dict, pictures: dict[str, dict]) -> str:
    parts = [f'<p class="sub">{esc(report.get("predictions", ""))}</p>']
    parts.append(
        _cards(
            report,
            [
                ("images evaluated", ["count"], "int"),
                ("top-1", ["top1"], "pct"),
                ("top-5", ["top5"], "pct"),
                *[(f"excluded: {why.replace('_', ' ')}", ["excluded", why], "int") for why in report["excluded"]],
            ],
        )
    )
    per_class = sorted(report["per_class"].items(), key=lambda kv: (-kv[1]["count"], kv[0]))[:SHOWN_CLASSES]
    parts.append(
        f"<h2>Top-1 accuracy per class ({len(per_class)} of {len(report['per_class'])} classes, most images first)</h2>"
    )
    parts.append(
        bars(
            report,
            [(f"{label_name(label)} ({s['count']})", [["per_class", label, "top1"]]) for label, s in per_class],
            "top-1 per class",
        )
    )
    if "confusion" in report and report["confusion"]["classes"]:
        parts.append("<h2>Confusion matrix (the classes with the most images)</h2>")
        parts.append(heatmap(report, ["confusion"], "true class", "predicted (top-1)"))
    if "calibration" in report:
        parts.append("<h2>Calibration</h2>")
        parts.append(_cards(report, [("expected calibration error", ["calibration", "ece"], "num")]))
        parts.append(reliability(report, [("model", ["calibration"])]))
    if report.get("worst"):
        parts.append("<h2>The most confident mistakes</h2>")
        figures = []
        for i, e in enumerate(report["worst"]):
            caption = (
                f'label {esc(label_name(e["label"]))}<br><span class="wrong">predicted {esc(e["predicted"])}</span> '
                f"{number(report, ['worst', i, 'score'], 'num')}"
            )
            figures.append(_figure(pictures.get(e["path"]), e["path"], caption))
        parts.append('<div class="grid">' + "".join(figures) + "</div>")
    return "\n".join(parts)


# ---- comparison -----------------------------------------------------------------------------------
def _comparison(report: dict, pictures: dict[str, dict]) -> str:
    a, b = report["a"], report["b"]
    parts = [
        f'<p class="sub legend"><b class="a">A</b> {esc(a["model"])}: {esc(a["uri"])}<br>'
        f'<b class="b">B</b> {esc(b["model"])}: {esc(b["uri"])}</p>',
        _cards(
            report,
            [
                ("rows in A", ["a", "rows"], "int"),
                ("rows in B", ["b", "rows"], "int"),
                ("inputs in both", ["inputs", "both"], "int"),
                ("only in A", ["inputs", "only_a"], "int"),
                ("only in B", ["inputs", "only_b"], "int"),
                ("errors in A only", ["errors", "a_only"], "int"),
                ("errors in B only", ["errors", "b_only"], "int"),
                ("errors in both", ["errors", "both"], "int"),
                ("compared", ["compared"], "int"),
            ],
        ),
    ]
    parts.append({"classify": _classify, "detect": _detect, "embed": _embed}[report["task"]](report, pictures))
    return "\n".join(parts)


def _classify(report: dict, pictures: dict[str, dict]) -> str:
    t = report["classify"]
    items = [
        ("top-1 agreement", ["classify", "top1_agreement"], "pct"),
        (f"top-{t['k']} overlap", ["classify", "topk_overlap"], "pct"),
        ("mean top-1 score shift (B - A)", ["classify", "score_shift", "mean"], "num"),
        ("mean |top-1 score shift|", ["classify", "score_shift", "mean_abs"], "num"),
    ]
    if t["labelled"]:
        items += [
            ("labelled", ["classify", "labelled"], "int"),
            ("top-1 A", ["classify", "accuracy", "a"], "pct"),
            ("top-1 B", ["classify", "accuracy", "b"], "pct"),
            ("A right, B wrong", ["classify", "flips", "a_right_b_wrong"], "int"),
            ("A wrong, B right", ["classify", "flips", "a_wrong_b_right"], "int"),
        ]
    parts = [_cards(report, items)]
    if t["labelled"]:
        per_class = sorted(t["per_class"].items(), key=lambda kv: (-kv[1]["count"], kv[0]))[:SHOWN_CLASSES]
        parts.append(
            f'<h2>Top-1 accuracy per class, <span class="legend"><b class="a">A</b> and <b class="b">B</b></span> '
            f"({len(per_class)} of {len(t['per_class'])} classes)</h2>"
        )
        rows = [
            (
                f"{label_name(label)} ({c['count']})",
                [["classify", "per_class", label, "a_top1"], ["classify", "per_class", label, "b_top1"]],
            )
            for label, c in per_class
        ]
        parts.append(bars(report, rows, "top-1 per class, A and B"))
        parts.append(
            "<h2>Flips per class</h2><table><tr><th>class</th><th>images</th><th>A right, B wrong</th>"
            "<th>A wrong, B right</th><th>agreement</th></tr>"
        )
        flipped = sorted(
            t["per_class"].items(), key=lambda kv: (-kv[1]["a_right_b_wrong"] - kv[1]["a_wrong_b_right"], kv[0])
        )
        for label, _ in flipped[:SHOWN_CLASSES]:
            keys = ["classify", "per_class", label]
            parts.append(
                f"<tr><td>{esc(label_name(label))}</td>{number(report, [*keys, 'count'], 'int', 'td')}"
                f"{number(report, [*keys, 'a_right_b_wrong'], 'int', 'td')}"
                f"{number(report, [*keys, 'a_wrong_b_right'], 'int', 'td')}"
                f"{number(report, [*keys, 'agreement'], 'pct', 'td')}</tr>"
            )
        parts.append("</table>")
    else:
        by_class = list(t["by_a_class"])[:SHOWN_CLASSES]
        parts.append(f"<h2>Top-1 agreement by A's class ({len(by_class)} of {len(t['by_a_class'])} classes)</h2>")
        parts.append(
            bars(
                report,
                [
                    (f"{c} ({t['by_a_class'][c]['count']})", [["classify", "by_a_class", c, "agreement"]])
                    for c in by_class
                ],
                "agreement",
            )
        )
    if t["confusion"]["classes"]:
        parts.append("<h2>A's top-1 against B's (A's most frequent classes)</h2>")
        parts.append(heatmap(report, ["classify", "confusion"], "A's top-1", "B's top-1"))
    parts.append(_changes(report, "classify"))
    if t["labelled"]:
        parts.append('<h2>Calibration, <span class="legend"><b class="a">A</b> and <b class="b">B</b></span></h2>')
        parts.append(
            _cards(
                report,
                [
                    ("ECE A", ["classify", "calibration", "a", "ece"], "num"),
                    ("ECE B", ["classify", "calibration", "b", "ece"], "num"),
                ],
            )
        )
        parts.append(
            reliability(report, [("A", ["classify", "calibration", "a"]), ("B", ["classify", "calibration", "b"])])
        )
    parts.append("<h2>Top-1 score shift, B - A</h2>")
    parts.append(histogram(report, ["classify", "score_shift", "histogram"], "B's top-1 score - A's top-1 score"))

    def caption(i: int, e: dict) -> str:
        mark = {True: "right", False: "wrong"}
        label = f"label {esc(label_name(e['label']))}<br>" if e.get("label") else ""
        return (
            f'{label}<b class="a">A</b> <span class="{mark.get(e.get("a_right"), "")}">{esc(e["a"])}</span> '
            f"{number(report, ['examples', i, 'a_score'], 'num')}<br>"
            f'<b class="b">B</b> <span class="{mark.get(e.get("b_right"), "")}">{esc(e["b"])}</span> '
            f"{number(report, ['examples', i, 'b_score'], 'num')}"
        )

    parts.append(_examples(report, pictures, "The most confident disagreements", caption))
    return "\n".join(parts)


def _changes(report: dict, task: str) -> str:
    changes = report[task]["changes"][:SHOWN_CHANGES]
    if not changes:
        return ""
    rows = "".join(
        f"<tr><td>{esc(c['a'])}</td><td>{esc(c['b'])}</td>"
        f"{number(report, [task, 'changes', i, 'count'], 'int', 'td')}</tr>"
        for i, c in enumerate(changes)
    )
    return f"<h2>Most frequent changes</h2><table><tr><th>A</th><th>B</th><th>inputs</th></tr>{rows}</table>"


def _detect(report: dict, pictures: dict[str, dict]) -> str:
    keys = [
        ("boxes in A", "boxes_a", "int"),
        ("boxes in B", "boxes_b", "int"),
        ("matched", "matched", "int"),
        ("only in A", "only_a", "int"),
        ("only in B", "only_b", "int"),
        ("label changes", "label_changes", "int"),
        ("mean IoU of matches", "mean_iou", "num"),
        ("images alike", "identical_images", "int"),
    ]
    parts = [_cards(report, [(title, ["detect", key], kind) for title, key, kind in keys])]
    parts.append("<h2>IoU of matched boxes</h2>")
    parts.append(histogram(report, ["detect", "iou_histogram"], "IoU"))
    if report["detect"]["confusion"]["classes"]:
        parts.append("<h2>Labels of matched boxes, A against B</h2>")
        parts.append(heatmap(report, ["detect", "confusion"], "A's label", "B's label"))
    parts.append(_changes(report, "detect"))

    def caption(i: int, e: dict) -> str:
        label = f"label {esc(label_name(e['label']))}<br>" if e.get("label") else ""
        return (
            f"{label}unmatched {number(report, ['examples', i, 'unmatched'], 'int')}, "
            f"label changes {number(report, ['examples', i, 'label_changes'], 'int')}, "
            f"mean IoU {number(report, ['examples', i, 'mean_iou'], 'num')}"
        )

    title = 'The biggest disagreements (<b class="a">A</b> solid, <b class="b">B</b> dashed)'
    parts.append(_examples(report, pictures, title, caption, boxes=True))
    return "\n".join(parts)


def _embed(report: dict, pictures: dict[str, dict]) -> str:
    t = report["embed"]
    parts = [_cards(report, [("dimension A", ["embed", "dim_a"], "int"), ("dimension B", ["embed", "dim_b"], "int")])]
    if not t["comparable"]:
        parts.append(f'<p class="note"><b>{esc(t["note"])}</b></p>')
        return "\n".join(parts)
    parts.append(
        _cards(
            report,
            [("mean cosine", ["embed", "cosine", "mean"], "num"), ("lowest cosine", ["embed", "cosine", "min"], "num")]
            + [
                (f"cosine >= {level}", ["embed", "cosine", "at_least", level], "pct")
                for level in t["cosine"]["at_least"]
            ],
        )
    )
    parts.append("<h2>Cosine between the two vectors of each input</h2>")
    parts.append(histogram(report, ["embed", "cosine", "histogram"], "cosine"))

    def caption(i: int, e: dict) -> str:
        label = f"label {esc(label_name(e['label']))}<br>" if e.get("label") else ""
        return f"{label}cosine {number(report, ['examples', i, 'cosine'], 'num')}"

    parts.append(_examples(report, pictures, "The least alike", caption))
    return "\n".join(parts)


def _examples(report: dict, pictures: dict[str, dict], title: str, caption, boxes: bool = False) -> str:
    if not report["examples"]:
        return ""
    figures = [
        _figure(pictures.get(e["path"]), e["path"], caption(i, e), e if boxes else None)
        for i, e in enumerate(report["examples"])
    ]
    return f"<h2>{title}</h2>" + '<div class="grid">' + "".join(figures) + "</div>"


def _figure(picture: dict | None, path: str, caption: str, boxes: dict | None = None) -> str:
    if picture and "src" in picture:
        w, h = picture["width"], picture["height"]
        overlay = ""
        if boxes is not None:
            ow, oh = picture["original"]
            rects = "".join(
                f'<rect class="box {side}" x="{x1}" y="{y1}" width="{x2 - x1}" height="{y2 - y1}" '
                'vector-effect="non-scaling-stroke">'
                f"<title>{esc(d['label'])} {d['score']:.3f}</title></rect>"
                for side in ("a", "b")
                for d in boxes[f"{side}_boxes"]
                for x1, y1, x2, y2 in [d["box"]]
            )
            overlay = f'<svg width="{w}" height="{h}" viewBox="0 0 {ow} {oh}" preserveAspectRatio="none">{rects}</svg>'
        pic = f'<img src="{picture["src"]}" width="{w}" height="{h}" alt="{esc(path)}">{overlay}'
    else:
        pic = f'<div class="missing">no picture: {esc((picture or {}).get("error", "not read"))}</div>'
    return (
        f'<figure><div class="pic">{pic}</div><figcaption>{caption}<br><small>{esc(path)}</small></figcaption></figure>'
    )
