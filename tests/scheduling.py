"""How ``make test`` spreads the suite over its workers (pytest-xdist, ``--dist loadgroup``).

A worker takes a whole file at a time, as ``--dist loadfile`` does, so module fixtures (a Serve
app, a backfill) are built once; the files of one ``xdist_group`` go to one worker together, as
they share session fixtures (tests/backfill_pairs.py) that each worker would otherwise build
again. Files are handed out in ``order_for_workers`` order: those that start processes first,
then Ray's, the fast tier last, so that the run ends on short tests spread over every worker
rather than on one long test alone.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


class FilesAndGroups(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


def work_unit(nodeid: str) -> str:
    """A test's group (xdist appends ``@group`` to the ids of a marked test), or else its file."""
    return nodeid.rsplit("@", 1)[1] if "@" in nodeid else nodeid.split("::", 1)[0]


def order_for_workers(items: list) -> None:
    """Sorts collected items in place by their file's (or group's) heaviest tier; a stable sort,
    so each file keeps its tests together and in order."""
    weight: dict[str, int] = {}
    for item in items:
        weight[_unit(item)] = min(weight.get(_unit(item), 2), _weight(item))
    items.sort(key=lambda item: weight[_unit(item)])


def _unit(item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0]) if mark else str(item.path)


def _weight(item) -> int:
    if item.get_closest_marker("process"):
        return 0
    return 1 if item.get_closest_marker("ray") or item.get_closest_marker("slow") else 2
