"""Class names and ImageNet wnids, all shipped offline, in class-index order.

The category names are torchvision's weight metadata (``torchvision.models._meta``: the lists its
pretrained weights carry), copied to ``data/imagenet_categories.txt`` and ``data/coco_categories.txt``
so that naming a class does not import torchvision (tests/test_labels.py proves them equal); the
1000 ImageNet-1k wnids are ``data/imagenet_wnids.txt`` (from timm's ``imagenet_synsets.txt``,
Apache-2.0).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def imagenet_categories() -> tuple[str, ...]:
    return _lines("imagenet_categories.txt", 1000)


@lru_cache(maxsize=None)
def coco_categories() -> tuple[str, ...]:
    return _lines("coco_categories.txt", 91)  # index 0 is __background__; unused ids are N/A


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    return _lines("imagenet_wnids.txt", 1000)


def _lines(name: str, count: int) -> tuple[str, ...]:
    text = resources.files("shared").joinpath("data", name).read_text(encoding="utf-8")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(lines) == count, (name, len(lines))
    return lines


@lru_cache(maxsize=None)
def class_index_lookup() -> dict[str, int]:
    """Maps a directory label to an ImageNet class index: a wnid, or a class name (any case)."""
    lookup = {name.lower(): i for i, name in enumerate(imagenet_categories()) if name != "N/A"}
    lookup.update({wnid: i for i, wnid in enumerate(imagenet_wnids())})
    return lookup
