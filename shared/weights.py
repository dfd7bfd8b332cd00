"""Where weights come from: the embedded package, a hub cache, a local file, or explicit random.

``weights`` is one string in the config vocabulary:
  "default"     the registry entry's usual source (embedded for efficientnet_lite0, else pretrained)
  "pretrained"  the library's own pretrained path (torchvision ``weights=DEFAULT`` honouring
                TORCH_HOME, transformers ``from_pretrained`` honouring HF_HOME / HF_HUB_OFFLINE)
  "random"      randomly initialised real architecture; tests and timing only, never a fallback
  <path>        a local state dict (.pt/.pth via ``torch.load(weights_only=True)``, .safetensors)
                or, for transformers models, a directory written by ``save_pretrained``
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shared.errors import WeightsUnavailable

SPECIAL = ("default", "pretrained", "random")


def is_path(weights: str) -> bool:
    return weights not in SPECIAL


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{str(path)!r} does not hold a state dict")
    return state


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    try:
        model.load_state_dict(load_state_dict_file(path))
    except RuntimeError as exc:  # key or shape mismatch
        raise WeightsUnavailable(f"weights in {str(path)!r} do not fit this architecture: {exc}") from None
    return model


def torchvision_pretrained(builder, weights, **kwargs) -> torch.nn.Module:
    """``builder(weights=member)``, with a clear message when it cannot download. ``weights`` is a
    torchvision weights enum (its ``DEFAULT`` is used) or one of its members (``IMAGENET1K_V1``)."""
    enum_value = weights.DEFAULT if isinstance(weights, type) else weights
    try:
        return builder(weights=enum_value, **kwargs)
    except OSError as exc:  # URLError and friends: no network and nothing cached
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum_value.url)
        raise WeightsUnavailable(
            f"pretrained weights {enum_value} are not cached and could not be downloaded ({exc}). "
            f"On an offline machine, copy {os.path.basename(enum_value.url)} to {cached} "
            f"(or set TORCH_HOME), or set weights to a local state-dict path."
        ) from None
