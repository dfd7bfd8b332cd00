"""How ``make test`` spreads the suite over its workers (pytest-xdist, ``--dist loadgroup``).

A worker takes a whole file at a time, as ``--dist loadfile`` does, so module fixtures (a Serve
app, a backfill) are built once; the files of one group in ``GROUPS`` go to one worker together,
as they share session fixtures that each worker would otherwise build again. (The groups are
named here by file, not with xdist's ``xdist_group`` mark: xdist 3.8 appends a mark's group to
``item._nodeid``, which pytest 9 no longer reads, so the mark groups nothing.) Files are handed
out in ``order_for_workers`` order: those that start processes first, then Ray's, the fast tier
last, so that the run ends on short tests spread over every worker rather than on one long test
alone.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# files that share session fixtures: tests/backfill_pairs.py's backfills, tests/serving.py's app
GROUPS = {
    "tests/test_compare_backfills.py": "backfill_pairs",
    "tests/test_reports_browser.py": "backfill_pairs",
    "tests/test_serve.py": "standard_app",
    "tests/test_v2_serve.py": "standard_app",
    "tests/test_ui_browser.py": "standard_app",
    "tests/test_dashboard.py": "standard_app",
}


class FilesAndGroups(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


def work_unit(nodeid: str) -> str:
    """What a worker takes with this test: its file's group, or else its file."""
    path = nodeid.split("::", 1)[0]
    return GROUPS.get(path, path)


def order_for_workers(items: list) -> None:
    """Sorts collected items in place by their work unit's heaviest tier; a stable sort, so each
    file keeps its tests together and in order."""
    weight: dict[str, int] = {}
    for item in items:
        unit = work_unit(item.nodeid)
        weight[unit] = min(weight.get(unit, 2), _weight(item))
    items.sort(key=lambda item: weight[work_unit(item.nodeid)])


def _weight(item) -> int:
    if item.get_closest_marker("process"):
        return 0
    return 1 if item.get_closest_marker("ray") or item.get_closest_marker("slow") else 2
