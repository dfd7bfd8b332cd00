"""The headline plot of a report as a PNG, for terminals and tickets (matplotlib, Agg backend).

- evaluation: top-1 accuracy of the classes with the most images, and the reliability diagram;
- classification comparison: flips per class (A right -> B wrong, and back) when the inputs are
  labelled, else top-1 agreement by A's class; and the top-1 score shift histogram;
- detection comparison: the IoU of matched boxes, and the boxes each side found;
- embedding comparison: the cosine histogram (or, for vectors of different widths, why not).

The file carries ``batch.reports.PNG_MARKER`` (``Software`` in a tEXt chunk), which marks it as
twinfer's.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

from batch.report_stats import label_name  # noqa: E402
from batch.reports import GENERATOR  # noqa: E402

SHOWN = 15  # classes per bar chart
COLOURS = {"a": "#3b6fb6", "b": "#e08a2c"}


def render_png(report: dict) -> bytes:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    try:
        if report["format"].startswith("twinfer-comparison/"):
            title = f"{report['task']}: A {report['a']['model']} vs B {report['b']['model']}"
            {"classify": _classify, "detect": _detect, "embed": _embed}[report["task"]](report, left, right)
        else:
            title = f"evaluation: top-1 {_pct(report['top1'])} over {report['count']} images"
            _evaluation(report, left, right)
        figure.suptitle(title)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": GENERATOR})
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _evaluation(report: dict, left, right) -> None:
    shown = sorted(report["per_class"].items(), key=lambda kv: (-kv[1]["count"], kv[0]))[:SHOWN][::-1]
    left.barh([label_name(label) for label, _ in shown], [100 * (s["top1"] or 0) for _, s in shown], color=COLOURS["a"])
    left.set_xlim(0, 100)
    left.set_xlabel("top-1 accuracy, %")
    left.set_title(f"{len(shown)} classes with the most images")
    if "calibration" in report:
        _reliability(right, [("model", report["calibration"], COLOURS["a"])])


def _reliability(axes, series) -> None:
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    width = 0.1 / len(series)
    for s, (name, calibration, colour) in enumerate(series):
        bins = [b for b in calibration["bins"] if b["count"]]
        axes.bar(
            [b["lower"] + (s + 0.5) * width for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            color=colour,
            label=f"{name} (ECE {calibration['ece']:.3f})" if calibration["ece"] is not None else name,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top-1 score)")
    axes.set_ylabel("accuracy")
    axes.set_title("reliability")
    axes.legend(loc="upper left")


def _histogram(axes, data: dict, xlabel: str, title: str) -> None:
    edges, counts = data["edges"], data["counts"]
    widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
    axes.bar(edges[:-1], counts, width=widths, align="edge", color=COLOURS["a"], edgecolor="white")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("inputs")
    axes.set_title(title)


def _classify(report: dict, left, right) -> None:
    t = report["classify"]
    if t["labelled"]:
        shown = sorted(
            t["per_class"].items(), key=lambda kv: (-kv[1]["a_right_b_wrong"] - kv[1]["a_wrong_b_right"], kv[0])
        )[:SHOWN][::-1]
        names = [label_name(label) for label, _ in shown]
        positions = range(len(names))
        left.barh([p - 0.2 for p in positions], [-c["a_right_b_wrong"] for _, c in shown], height=0.4, color="#b3261e")
        left.barh([p + 0.2 for p in positions], [c["a_wrong_b_right"] for _, c in shown], height=0.4, color="#2c7a3f")
        left.set_yticks(list(positions), names)
        left.axvline(0, color="grey", linewidth=1)
        left.set_xlabel("inputs: A right -> B wrong (left), A wrong -> B right (right)")
        flips = t["flips"]
        left.set_title(
            f"flips per class: {flips['a_right_b_wrong']} lost, {flips['a_wrong_b_right']} gained; "
            f"top-1 A {_pct(t['accuracy']['a'])}, B {_pct(t['accuracy']['b'])}"
        )
    else:
        shown = list(t["by_a_class"].items())[:SHOWN][::-1]
        left.barh([c for c, _ in shown], [100 * s["agreement"] for _, s in shown], color=COLOURS["a"])
        left.set_xlim(0, 100)
        left.set_xlabel("top-1 agreement, %")
        left.set_title(f"agreement {_pct(t['top1_agreement'])}, by A's class (no labels)")
    _histogram(right, t["score_shift"]["histogram"], "B's top-1 score - A's", "top-1 score shift")


def _detect(report: dict, left, right) -> None:
    t = report["detect"]
    _histogram(left, t["iou_histogram"], "IoU", f"{t['matched']} matched boxes, mean IoU {t['mean_iou'] or 0:.3f}")
    names = ["only in A", "matched", "only in B", "label changes"]
    values = [t["only_a"], t["matched"], t["only_b"], t["label_changes"]]
    right.bar(names, values, color=[COLOURS["a"], "grey", COLOURS["b"], "#b3261e"])
    right.set_title("boxes")


def _embed(report: dict, left, right) -> None:
    t = report["embed"]
    right.axis("off")
    if not t["comparable"]:
        left.axis("off")
        left.text(0.02, 0.5, t["note"], wrap=True, fontsize=12)
        return
    cosine = t["cosine"]
    counts = cosine["histogram"]["counts"]
    edges = cosine["histogram"]["edges"]
    labels = [f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(len(counts))]
    left.bar(labels, counts, color=COLOURS["a"])
    left.tick_params(axis="x", rotation=45)
    left.set_xlabel("cosine between A's and B's vector")
    left.set_title(f"mean cosine {cosine['mean']:.6f}, lowest {cosine['min']:.6f}")
    lines = [f"cosine >= {level}: {_pct(share)}" for level, share in cosine["at_least"].items()]
    right.text(0.02, 0.5, "\n".join(lines), fontsize=12, family="monospace")
