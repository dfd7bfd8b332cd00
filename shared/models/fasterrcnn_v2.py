"""torchvision Faster R-CNN ResNet50-FPN v2 (COCO). Its own transform normalises and resizes,
so it takes a list of float images in [0, 1] of any size and answers boxes in those pixels."""

from __future__ import annotations

import torch
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights, fasterrcnn_resnet50_fpn_v2

from shared.weights import load_into, torchvision_pretrained


def build(weights: str, options: dict) -> torch.nn.Module:
    if weights in ("default", "pretrained"):
        return torchvision_pretrained(fasterrcnn_resnet50_fpn_v2, FasterRCNN_ResNet50_FPN_V2_Weights, **options)
    model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **options)
    return model if weights == "random" else load_into(model, weights)
