"""The shipped category lists are torchvision's weight metadata, name for name and in order."""

from __future__ import annotations

from torchvision.models._meta import _COCO_CATEGORIES, _IMAGENET_CATEGORIES

from shared.labels import class_index_lookup, coco_categories, imagenet_categories, imagenet_wnids


def test_the_imagenet_and_coco_names_are_torchvisions():
    assert imagenet_categories() == tuple(_IMAGENET_CATEGORIES)
    assert coco_categories() == tuple(_COCO_CATEGORIES)


def test_a_directory_label_maps_to_its_class_by_wnid_or_by_name():
    lookup = class_index_lookup()
    assert len(imagenet_wnids()) == 1000
    assert lookup["n02123045"] == lookup["tabby"] == imagenet_categories().index("tabby") == 281
    assert lookup["espresso"] == 967
