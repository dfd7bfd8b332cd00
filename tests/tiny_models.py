"""A tiny classifier registered for a test, for what the real architectures make slow to test
(dynamo traces each batch size of EfficientNet for seconds): graph counts, compile ordering."""

from __future__ import annotations

import torch

from shared.labels import imagenet_categories
from shared.prepare import PreprocessSpec
from shared.registry import REGISTRY, ModelSpec

TINY = "tiny_classifier"


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
        )
        self.head = torch.nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def register_tiny(monkeypatch) -> str:
    spec = ModelSpec(
        name=TINY,
        task="classify",
        build=lambda weights, options: TinyClassifier(),
        preprocess=PreprocessSpec("resize_crop", 32, resize=36),
        labels=imagenet_categories,
        description="test-only tiny classifier",
    )
    monkeypatch.setitem(REGISTRY, TINY, spec)
    return TINY
