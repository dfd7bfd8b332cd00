"""torchvision ResNet152 (ImageNet-1k)."""

from __future__ import annotations

import torch
from torchvision.models import ResNet152_Weights, resnet152

from shared.weights import load_into, torchvision_pretrained


def build(weights: str, options: dict) -> torch.nn.Module:
    if weights in ("default", "pretrained"):
        return torchvision_pretrained(resnet152, ResNet152_Weights, **options)
    model = resnet152(weights=None, **options)
    return model if weights == "random" else load_into(model, weights)
