"""Hugging Face ViT-B/16 (``google/vit-base-patch16-224``) through transformers."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.errors import WeightsUnavailable
from shared.weights import load_into

HF_ID = "google/vit-base-patch16-224"
# the checkpoint this entry was checked against; a moved "main" cannot change what is served
HF_REVISION = "3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3"


class LogitsOnly(torch.nn.Module):
    """Adapts a transformers classifier to ``tensor -> logits`` like the torchvision models."""

    def __init__(self, hf_model: torch.nn.Module):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


def build(weights: str, options: dict) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    if weights in ("default", "pretrained"):
        try:
            return LogitsOnly(ViTForImageClassification.from_pretrained(HF_ID, revision=HF_REVISION))
        except OSError as exc:
            raise WeightsUnavailable(
                f"cannot load {HF_ID}@{HF_REVISION} from the Hugging Face hub or cache ({exc}). On an offline "
                f"machine, pre-fill the cache (HF_HOME) and set HF_HUB_OFFLINE=1, or set weights "
                f"to a directory written by save_pretrained()."
            ) from None
    if weights != "random" and Path(weights).is_dir():
        return LogitsOnly(ViTForImageClassification.from_pretrained(weights))
    config = ViTConfig(num_labels=1000, image_size=224, patch_size=16, **options)
    model = LogitsOnly(ViTForImageClassification(config))
    if weights != "random":
        load_into(model.hf_model, weights)
    return model
