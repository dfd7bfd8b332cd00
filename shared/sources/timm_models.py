"""``timm:<name>`` (``resnet50``, or with a pretrained tag, ``resnet50.a1_in1k``); needs
``pip install 'twinfer[timm]'``.

Preprocessing is timm's eval data config (``resolve_data_config`` of the name's pretrained config,
the same as ``timm.data.resolve_model_data_config(model)`` without building the model):

    crop_mode center   resize_crop: shorter side to floor(size / crop_pct), centre crop size
    crop_mode squash   resize_exact: squash to floor(size / crop_pct), centre crop size
    crop_mode border   refused (it pads to keep the whole image)
    non-square input_size, or an interpolation other than bilinear / bicubic: refused

Labels: the config's own label names if it has them; ImageNet-1k models get the names twinfer's
curated models use (torchvision's, which tell the two "crane" classes apart); other ImageNet subsets
(12k, 21k, 22k) the first WordNet lemma timm has for each class; anything else ``class_<i>``.
Weights: ``pretrained`` through timm's own loader (the hub cache in HF_HOME, or TORCH_HOME for
URL-hosted checkpoints), ``random`` (``pretrained=False``), or a local state dict.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch

from shared.errors import ModelNotFound, WeightsUnavailable
from shared.labels import imagenet_categories
from shared.prepare import PreprocessSpec
from shared.registry import ModelSpec, suggest
from shared.sources import interpolation_name
from shared.weights import load_into

INSTALL = "pip install 'twinfer[timm]'"


def import_timm():
    try:
        import timm
    except ImportError:
        raise ModelNotFound(f"timm: models need timm, which is not installed here: {INSTALL}") from None
    return timm


def spec_for(rest: str, *, revision: str | None = None, weights: str = "default") -> ModelSpec:
    timm = import_timm()
    from timm.data import resolve_data_config

    config = pretrained_config(timm, rest)
    num_classes = int(config.get("num_classes") or 0)
    if num_classes == 0:
        raise ModelNotFound(
            f"timm:{rest} has no classifier (num_classes 0: a feature backbone); choose a name whose "
            f"pretrained tag has a head"
        )
    data = resolve_data_config(pretrained_cfg=config)
    preprocess = data_config_preprocess(data, f"timm:{rest}")
    return ModelSpec(
        name=f"timm:{rest}",
        task="classify",
        build=_builder(rest, config),
        embed_head=_pooled_features,
        preprocess=preprocess,
        labels=lambda: class_names(num_classes, tuple(config.get("label_names") or ())),
        description=f"timm {config.get('architecture', rest)}.{config.get('tag') or 'default'} "
        f"({num_classes} classes, {weights} weights)",
    )


def _pooled_features(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """timm's own way to a feature extractor: no classifier, the pooled features out (for distilled
    models, the average of both heads' inputs, as their classifier averages their outputs)."""
    model.reset_classifier(0)
    return model, int(model.num_features)


def pretrained_config(timm, rest: str) -> dict:
    """timm's pretrained config for ``rest`` (its default tag when none is given); ``ModelNotFound``
    with close names for a name timm does not have."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    architecture, tag = split_model_name_tag(rest)
    if not timm.is_model(architecture):
        raise ModelNotFound(f"timm has no model {architecture!r}{suggest(architecture, timm.list_models())}")
    try:
        config = get_pretrained_cfg(rest)
    except RuntimeError:  # an unknown tag
        tagged = timm.list_models(f"{architecture}.*", pretrained=True)
        raise ModelNotFound(
            f"timm has no pretrained tag {tag!r} for {architecture}{suggest(rest, tagged)}; "
            f"its tags: {', '.join(t.partition('.')[2] for t in tagged) or 'none'}"
        ) from None
    if config is None:  # an architecture with no pretrained configs: its model's own defaults
        with torch.device("meta"):
            return dict(timm.create_model(rest, pretrained=False).pretrained_cfg)
    return config.to_dict()


def data_config_preprocess(data: dict, what: str) -> PreprocessSpec:
    """timm's eval transform (``transforms_factory.transforms_imagenet_eval``) as a PreprocessSpec."""
    _, height, width = data["input_size"]
    if height != width:
        raise ModelNotFound(f"{what} takes non-square {height}x{width} inputs; twinfer's inputs are square")
    interpolation = interpolation_name(data.get("interpolation", "bilinear"))
    if interpolation is None:
        raise ModelNotFound(f"{what} resizes with {data['interpolation']!r}; twinfer resizes bilinear or bicubic")
    crop_mode = data.get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        raise ModelNotFound(f"{what} uses crop_mode {crop_mode!r}, which pads; twinfer centre-crops or squashes")
    crop_pct = data.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    resize = math.floor(height / crop_pct)
    mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
    if crop_mode == "squash":
        mode, resize = "resize_exact", None if resize == height else resize
    else:
        mode = "resize_crop"
    return PreprocessSpec(mode, height, resize=resize, mean=mean, std=std, interpolation=interpolation)


@lru_cache(maxsize=8)
def class_names(num_classes: int, label_names: tuple[str, ...] = ()) -> tuple[str, ...]:
    if len(label_names) == num_classes:
        return label_names
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset == "imagenet-1k":
        return imagenet_categories()
    if subset:
        return tuple(lemmas.split(",")[0].strip() for lemmas in ImageNetInfo(subset).label_descriptions())
    return tuple(f"class_{i}" for i in range(num_classes))


def _builder(rest: str, config: dict):
    def build(weights: str, options: dict) -> torch.nn.Module:
        timm = import_timm()
        if weights in ("default", "pretrained"):
            return _pretrained(timm, rest, config, options)
        model = timm.create_model(rest, pretrained=False, **options)
        return model if weights == "random" else load_into(model, weights)

    return build


def _pretrained(timm, rest: str, config: dict, options: dict) -> torch.nn.Module:
    hub_id, url, file = config.get("hf_hub_id"), config.get("url"), config.get("file")
    if not (hub_id or url or file):  # timm would warn and go on with random weights
        raise WeightsUnavailable(
            f"timm:{rest} has no pretrained weights; set weights to a local state-dict path (or random)"
        )
    try:
        return timm.create_model(rest, pretrained=True, **options)
    except (OSError, RuntimeError) as exc:  # not cached, offline (LocalEntryNotFoundError is an OSError)
        if hub_id:  # timm prefers the hub whenever huggingface_hub is installed (transformers needs it)
            where = f"pre-fill the Hugging Face cache (HF_HOME) with {hub_id} and set HF_HUB_OFFLINE=1"
        elif url:
            where = (
                f"copy {os.path.basename(url)} to {os.path.join(torch.hub.get_dir(), 'checkpoints')} "
                "(or set TORCH_HOME)"
            )
        else:
            where = f"make {file} readable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsUnavailable(
            f"cannot load timm:{rest}'s pretrained weights ({reason}). On an offline machine, {where}, "
            f"or set weights to a local state-dict path."
        ) from None
