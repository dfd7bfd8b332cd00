"""``hf:<hub id or save_pretrained directory>``: any transformers ``AutoModelForImageClassification``.

At spec time only ``config.json`` and ``preprocessor_config.json`` are read (from the directory, or
the hub id at ``revision``; with ``HF_HUB_OFFLINE=1`` only from the local cache). Custom code is
never run (``trust_remote_code=False``): models that need it are refused.

Image processor -> ``PreprocessSpec`` (``processor_preprocess``), for the processor classes whose
resize rules are known; others are refused rather than guessed:

    size {height, width} square             resize_exact (squash); non-square is refused
    ... + center crop {height, width}       resize_exact to size, then centre crop (DeiT)
    size {shortest_edge} + center crop      resize_crop: shorter side to shortest_edge, crop
    ConvNext (also ResNet, RegNet, CvT)     shortest_edge < 384: shorter side to
                                            int(shortest_edge / crop_pct), crop shortest_edge;
                                            else squash to shortest_edge (as its resize does)
    PoolFormer                              resize target scaled by 1 / crop_pct, then crop
    LeViT                                   shorter side to int(256 / 224 * shortest_edge), crop
    TimmWrapper (hub ``timm/...`` models)   timm's data config, as for ``timm:`` names

Rescale, normalize (and EfficientNet's offset and ``include_top``) are per-channel affine maps of
the 0-255 pixels; they are folded into ``mean``/``std`` in [0, 1] units, so any combination is exact.
``resample``: BILINEAR -> bilinear, BICUBIC -> bicubic exactly; LANCZOS is served as bicubic and
BOX / HAMMING as (antialiased) bilinear, close for downscaling photos and noted in the spec's
description; NEAREST is refused. Labels are ``config.id2label`` in index order.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from shared.errors import ModelNotFound, WeightsUnavailable
from shared.models.vit_b16 import LogitsOnly
from shared.prepare import PreprocessSpec
from shared.registry import ModelSpec, suggest
from shared.weights import load_into

PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
APPROXIMATED = {"lanczos": "bicubic", "box": "bilinear", "hamming": "bilinear"}
# processor classes (without the Fast/Pil suffix) whose resize, crop, rescale and normalize follow
# the rules above; new ones are added here once their rules are checked
KNOWN_PROCESSORS = frozenset(
    {
        "ViT",
        "DeiT",
        "Bit",
        "CLIP",
        "Siglip",
        "Beit",
        "Pvt",
        "MobileNetV1",
        "MobileNetV2",
        "Segformer",
        "ConvNext",
        "PoolFormer",
        "Levit",
        "EfficientNet",
        "TimmWrapper",
    }
)


def spec_for(rest: str, *, revision: str | None = None, weights: str = "default") -> ModelSpec:
    directory = local_directory(rest)
    source = str(directory) if directory else rest
    where = f"directory {source}" if directory else f"hub {rest}@{revision or 'main'}"
    config = read_config(source, revision, where)
    processor = read_processor(source, revision, where)
    preprocess, notes = processor_preprocess(processor)
    labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
    return ModelSpec(
        name=f"hf:{rest}",
        task="classify",
        build=_builder(source, revision, where),
        preprocess=preprocess,
        labels=lambda: labels,
        description=f"Hugging Face {type(config).__name__.removesuffix('Config')} from {where} "
        f"({len(labels)} classes{''.join(f'; {n}' for n in notes)})",
        revisioned=directory is None,  # a directory has no revisions
    )


def local_directory(rest: str) -> Path | None:
    """The directory ``rest`` names, None for a hub id; ``ModelNotFound`` for a path that is no
    directory, or a name that is neither."""
    path = Path(rest).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(rest)
        if not rest.startswith((".", "~")):
            return None  # owner/name (or a relative path that is not here: the hub is asked)
    except HFValidationError:
        pass
    if path.exists():
        raise ModelNotFound(f"hf:{rest} is a file; name the directory save_pretrained() wrote")
    parent = path.parent
    near = suggest(path.name, sorted(p.name for p in parent.iterdir() if p.is_dir())) if parent.is_dir() else ""
    raise ModelNotFound(
        f"hf:{rest}: no such directory{near}, and it is not a hub id (owner/name); "
        f"name a directory written by save_pretrained() or a hub id"
    )


def read_config(source: str, revision: str | None, where: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    config = hub_call(lambda: AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False), where)
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelNotFound(
            f"{where} is a {config.model_type!r} model (architectures {config.architectures}), not one "
            f"AutoModelForImageClassification builds; twinfer serves image classifiers from hf:"
        )
    return config


def read_processor(source: str, revision: str | None, where: str):
    from transformers import AutoImageProcessor

    try:
        return hub_call(
            lambda: AutoImageProcessor.from_pretrained(source, revision=revision, trust_remote_code=False), where
        )
    except WeightsUnavailable as exc:
        if "preprocessor_config.json" not in str(exc):
            raise
        raise ModelNotFound(
            f"{where} has no image processor (preprocessor_config.json), so its preprocessing is unknown; "
            f"save the processor it was trained with next to it: "
            f"AutoImageProcessor.from_pretrained(<base>).save_pretrained(<dir>)"
        ) from None


def hub_call(load, where: str):
    """``load()``, its hub failures turned into twinfer's: ``ModelNotFound`` for names and revisions
    the hub does not have and for custom code, ``WeightsUnavailable`` (with what to do) for files
    that are neither cached nor downloadable."""
    try:
        return load()
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelNotFound(
            f"{where} needs its own Python code (trust_remote_code), which twinfer does not run; "
            f"use a model transformers implements"
        ) from None
    except OSError as exc:
        from huggingface_hub import errors

        cause = _hub_cause(exc)
        if isinstance(cause, errors.RevisionNotFoundError):
            raise ModelNotFound(f"{where}: no such revision on the hub") from None
        if isinstance(cause, (errors.RepositoryNotFoundError, errors.HFValidationError)):
            raise ModelNotFound(f"{where}: no such model on the hub (or it is private and no token is set)") from None
        raise WeightsUnavailable(
            f"cannot load {where} from the Hugging Face hub or cache ({str(exc).splitlines()[0]}). On an "
            f"offline machine, pre-fill the cache (HF_HOME) and set HF_HUB_OFFLINE=1, or name a directory "
            f"written by save_pretrained() (hf:/path/to/dir)."
        ) from None


def _hub_cause(exc: BaseException) -> BaseException:
    from huggingface_hub import errors

    hub_errors = (errors.RevisionNotFoundError, errors.RepositoryNotFoundError, errors.HFValidationError)
    while exc is not None and not isinstance(exc, hub_errors):
        exc = exc.__cause__ or exc.__context__
    return exc


def _builder(source: str, revision: str | None, where: str):
    def build(weights: str, options: dict) -> torch.nn.Module:
        from transformers import AutoConfig
        from transformers import AutoModelForImageClassification as Auto

        if weights in ("default", "pretrained"):
            model = hub_call(
                lambda: Auto.from_pretrained(source, revision=revision, trust_remote_code=False, **options), where
            )
        elif weights != "random" and Path(weights).expanduser().is_dir():  # another save_pretrained() of it
            model = hub_call(lambda: Auto.from_pretrained(weights, trust_remote_code=False, **options), weights)
        else:
            config = hub_call(
                lambda: AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False, **options), where
            )
            model = Auto.from_config(config)
            if weights != "random":
                load_into(model, weights)
        return LogitsOnly(model.eval())

    return build


# ---- image processor -> PreprocessSpec -------------------------------------------------------------


def processor_preprocess(processor) -> tuple[PreprocessSpec, list[str]]:
    """The spec that prepares images as ``processor`` does, and notes on any approximation."""
    kind = re.sub(r"(ImageProcessor|FeatureExtractor)(Fast|Pil)?$", "", type(processor).__name__)
    if kind == "TimmWrapper":
        from shared.sources.timm_models import data_config_preprocess

        return data_config_preprocess(processor.data_config, type(processor).__name__), []
    for flag in ("do_pad", "do_flip_channel_order", "do_color_quantize"):
        if getattr(processor, flag, None):
            raise ModelNotFound(f"{type(processor).__name__} sets {flag}, which twinfer's preprocessing cannot do")
    if kind not in KNOWN_PROCESSORS:
        raise ModelNotFound(
            f"image processor {type(processor).__name__}: twinfer does not know its resize rules "
            f"(it reproduces {', '.join(sorted(KNOWN_PROCESSORS))})"
        )
    refuse = lambda why: ModelNotFound(f"{type(processor).__name__} {why}; twinfer's inputs are square crops")  # noqa: E731
    if not getattr(processor, "do_resize", True):
        raise refuse("does not resize (do_resize false)")
    size, crop_pct = _size(processor.size), getattr(processor, "crop_pct", None)
    crop = _size(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else {}
    if kind == "ConvNext":  # its own resize: crop_pct below 384, a plain squash from 384 on
        edge = size.get("shortest_edge")
        if not edge:
            raise refuse(f"has size {size} without shortest_edge")
        if edge < 384:
            keep_aspect, target, crop = True, int(edge / crop_pct), {"height": edge, "width": edge}
        else:
            keep_aspect, target, crop = False, edge, {}
    elif "shortest_edge" in size:
        keep_aspect, target = True, size["shortest_edge"]
        if kind == "Levit":
            target = int(256 / 224 * target)
        elif kind == "PoolFormer" and crop_pct:
            target = int(target / crop_pct)
    elif "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise refuse(f"resizes to a non-square {size['height']}x{size['width']}")
        keep_aspect, target = False, size["height"]
        if kind == "PoolFormer" and crop_pct:
            target = int(target / crop_pct)
    else:
        raise refuse(f"has size {size}, which twinfer cannot resize to")
    if crop and crop.get("height") != crop.get("width"):
        raise refuse(f"crops to a non-square {crop}")
    side = crop.get("height", target)
    if side > target:
        raise refuse(f"crops {side} pixels out of {target} (it would pad)")
    if keep_aspect and not crop:
        raise refuse("keeps the aspect ratio without a crop, so its inputs differ in shape")
    interpolation, notes = _interpolation(processor)
    mean, std = _normalisation(processor, kind)
    mode, resize = ("resize_crop", target) if keep_aspect else ("resize_exact", target if target != side else None)
    return PreprocessSpec(mode, side, resize=resize, mean=mean, std=std, interpolation=interpolation), notes


def _size(size) -> dict:
    """A processor's size (dict, SizeDict or a legacy int) as a dict of its set keys."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    return {key: size.get(key) for key in keys if size.get(key) is not None}


def _interpolation(processor) -> tuple[str, list[str]]:
    resample = getattr(processor, "resample", None)
    if resample is None:
        return "bilinear", []  # transformers' own resize default
    value = getattr(resample, "value", resample)  # an InterpolationMode's value is its name
    name = value.lower() if isinstance(value, str) else PIL_RESAMPLE.get(int(value), str(value))
    if name in ("bilinear", "bicubic"):
        return name, []
    if name in APPROXIMATED:
        return APPROXIMATED[name], [f"its {name} resampling is served as {APPROXIMATED[name]}"]
    raise ModelNotFound(f"{type(processor).__name__} resamples with {name}; twinfer resizes bilinear or bicubic")


def _normalisation(processor, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std in [0, 1] units equal to what the processor does to 0-255 pixels: every step is
    per channel ``x -> a * x + b``, and (x / 255 - mean) / std is one such map."""
    scale = [float(processor.rescale_factor) if processor.do_rescale else 1.0] * 3
    shift = [
        -1.0 if kind == "EfficientNet" and processor.do_rescale and getattr(processor, "rescale_offset", False) else 0.0
    ] * 3
    std = _three(processor.image_std)
    if processor.do_normalize:
        mean = _three(processor.image_mean)
        scale = [a / s for a, s in zip(scale, std)]
        shift = [(b - m) / s for b, m, s in zip(shift, mean, std)]
    if kind == "EfficientNet" and getattr(processor, "include_top", False):  # it divides by std once more
        scale = [a / s for a, s in zip(scale, std)]
        shift = [b / s for b, s in zip(shift, std)]
    ours_std = [1.0 / (255.0 * a) for a in scale]
    return tuple(round(-b * s, 12) for b, s in zip(shift, ours_std)), tuple(round(s, 12) for s in ours_std)


def _three(value) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    return values * 3 if len(values) == 1 else values
