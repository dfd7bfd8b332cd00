"""Class names and ImageNet wnids, all shipped offline.

Category names come from torchvision's weight metadata (the same lists its pretrained weights
carry); the 1000 ImageNet-1k wnids, in class-index order, are ``data/imagenet_wnids.txt``
(from timm's ``imagenet_synsets.txt``, Apache-2.0).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


@lru_cache(maxsize=None)
def coco_categories() -> tuple[str, ...]:
    from torchvision.models._meta import _COCO_CATEGORIES

    return tuple(_COCO_CATEGORIES)


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    text = resources.files("shared").joinpath("data/imagenet_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == 1000, len(wnids)
    return wnids


@lru_cache(maxsize=None)
def class_index_lookup() -> dict[str, int]:
    """Maps a directory label to an ImageNet class index: a wnid, or a class name (any case)."""
    lookup = {name.lower(): i for i, name in enumerate(imagenet_categories()) if name != "N/A"}
    lookup.update({wnid: i for i, wnid in enumerate(imagenet_wnids())})
    return lookup
