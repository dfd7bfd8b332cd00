"""twinfer's model core: one wrapper, used by the online (deployments/) and offline (batch/) paths."""

from shared.config import DecodeConfig, ModelConfig
from shared.errors import TwinferError
from shared.loader import ImageLoader
from shared.registry import get_spec, list_models
from shared.wrapper import ModelWrapper

__all__ = ["DecodeConfig", "ImageLoader", "ModelConfig", "ModelWrapper", "TwinferError", "get_spec", "list_models"]
