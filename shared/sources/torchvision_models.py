"""``torchvision:<builder>``: any torchvision classifier or detector.

Preprocessing and labels come from the chosen member of the builder's weights enum:
``default``/``pretrained`` = ``DEFAULT``, a member name (``IMAGENET1K_V1``) = that member, and
``random`` or a local state dict = ``DEFAULT``'s (the architecture is built the way that member
would build it, e.g. ``vit_h_14`` at 518 pixels, so its state dicts load). Classifiers resize as
the member's ``transforms()`` do (resize the shorter side, centre-crop); detectors resize inside
the model, so they get the curated detector's ``max_side`` 1333 and no normalisation here.
Segmentation, video, optical-flow and quantized builders are refused.
"""

from __future__ import annotations

import re

import torch

from shared.errors import ModelNotFound
from shared.prepare import PreprocessSpec
from shared.registry import DETECTOR_OPTIONS, ModelSpec, suggest
from shared.sources import interpolation_name
from shared.weights import load_into, torchvision_pretrained

DETECTOR_PREPROCESS = PreprocessSpec("max_side", 1333, mean=(0.0,) * 3, std=(1.0,) * 3)
# options each detector family takes that change how it resizes or filters, not its weights
_DENSE_OPTIONS = frozenset({"score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"})
DETECTOR_FAMILY_OPTIONS = {
    "faster_rcnn": DETECTOR_OPTIONS,
    "mask_rcnn": DETECTOR_OPTIONS,
    "keypoint_rcnn": DETECTOR_OPTIONS,
    "retinanet": _DENSE_OPTIONS | {"min_size", "max_size"},
    "fcos": _DENSE_OPTIONS | {"min_size", "max_size"},
    "ssd": _DENSE_OPTIONS,  # resizes to a fixed 300 x 300 (320 for SSDlite) inside
    "ssdlite": _DENSE_OPTIONS,
}
REFUSED_KINDS = {
    "segmentation": "a segmentation model",
    "video": "a video model",
    "optical_flow": "an optical-flow model",
    "quantization": "a quantized model (int8 CPU kernels)",
}
MEMBER_NAME = re.compile(r"[A-Z][A-Z0-9_]*")  # how torchvision names weights: IMAGENET1K_V2, COCO_V1


def servable() -> tuple[list[str], list[str]]:
    """(classifier builders, detector builders) torchvision offers."""
    import torchvision.models as models

    return models.list_models(module=models), models.list_models(module=models.detection)


def spec_for(rest: str, *, revision: str | None = None, weights: str = "default") -> ModelSpec:
    import torchvision.models as models

    classifiers, detectors = servable()
    name = f"torchvision:{rest}"
    if rest not in classifiers and rest not in detectors:
        if rest in models.list_models():
            kind = models.get_model_builder(rest).__module__.split(".")[2]
            what = REFUSED_KINDS.get(kind, f"a {kind} model")
            instead = rest.removeprefix("quantized_")
            hint = (
                f" (the float model is torchvision:{instead})"
                if kind == "quantization" and instead in classifiers
                else ""
            )
            raise ModelNotFound(f"{name} is {what}; twinfer serves torchvision classifiers and detectors{hint}")
        raise ModelNotFound(
            f"torchvision has no classifier or detector {rest!r}{suggest(rest, classifiers + detectors)}"
        )
    builder = models.get_model_builder(rest)
    enum = models.get_model_weights(rest)
    member = choose_member(enum, weights, name)
    detector = rest in detectors
    categories = member.meta.get("categories")
    if not categories:
        raise ModelNotFound(
            f"{member} has no class head (feature-extractor weights); choose another of {members(enum)}"
        )
    labels = tuple(categories)
    family = builder.__module__.rsplit(".", 1)[1]
    keeps_weights = DETECTOR_FAMILY_OPTIONS.get(family, frozenset()) if detector else frozenset()
    if chosen_by(enum, weights) is not None:
        source = f"{member} weights"
    else:
        source = f"{'random' if weights == 'random' else repr(weights)} weights, {member}'s preprocessing"
    return ModelSpec(
        name=name,
        task="detect" if detector else "classify",
        build=_builder(rest, builder, enum, detector, keeps_weights),
        preprocess=DETECTOR_PREPROCESS if detector else classifier_preprocess(member),
        labels=lambda: labels,
        description=f"torchvision {rest}, {source} ({len(labels)} classes)",
        pretrained_options=keeps_weights,
    )


def members(enum) -> str:
    return ", ".join(enum.__members__)


def chosen_by(enum, weights: str):
    """The member ``weights`` names (default/pretrained = DEFAULT), or None (random, a path)."""
    if weights in ("default", "pretrained"):
        return enum.DEFAULT
    return enum.__members__.get(weights)


def choose_member(enum, weights: str, name: str):
    """The member whose preprocessing and labels apply: the one named, else DEFAULT's. A name that
    looks like a member but is none fails here, rather than later as a missing file."""
    member = chosen_by(enum, weights)
    if member is not None:
        return member
    if weights != "random" and MEMBER_NAME.fullmatch(weights):
        raise ModelNotFound(
            f"{name} has no weights {weights!r}{suggest(weights, list(enum.__members__))}; "
            f"choose one of {members(enum)}, random, or a state-dict path"
        )
    return enum.DEFAULT


def classifier_preprocess(member) -> PreprocessSpec:
    transforms = member.transforms()
    crop, resize = getattr(transforms, "crop_size", None), getattr(transforms, "resize_size", None)
    interpolation = interpolation_name(getattr(transforms, "interpolation", None))
    if not crop or not resize or interpolation is None:
        raise ModelNotFound(f"{member}'s transforms ({transforms}) are not a resize and centre crop twinfer can do")
    return PreprocessSpec(
        "resize_crop",
        crop[0],
        resize=resize[0],
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=interpolation,
    )


def implied_by(rest: str, member) -> dict:
    """Architecture arguments torchvision's builder sets itself when it loads ``member``: a random
    or local-state-dict build uses them too, so it is the architecture those weights fit."""
    if rest.startswith("vit_"):
        return {"image_size": member.meta["min_size"][0]}
    if rest.startswith("maxvit_"):
        return {"input_size": member.meta["min_size"]}
    if rest in ("googlenet", "inception_v3"):
        return {"transform_input": True, "aux_logits": False}  # the checkpoints carry no aux heads
    return {}


def _builder(rest: str, builder, enum, detector: bool, keeps_weights: frozenset[str]):
    def build(weights: str, options: dict) -> torch.nn.Module:
        member = chosen_by(enum, weights)
        if member is not None:
            changes = sorted(set(options) - keeps_weights)
            if changes:  # the config checks default/pretrained; a member name reaches here
                raise ValueError(
                    f"architecture options {changes} change the model; use them with weights 'random' or a path"
                )
            model = torchvision_pretrained(builder, member, **options)
        else:
            kwargs = {"weights": None, **implied_by(rest, enum.DEFAULT), **options}
            if detector:
                kwargs["weights_backbone"] = None  # never fetch ImageNet backbone weights for a random detector
            model = builder(**kwargs)
            if weights != "random":
                load_into(model, weights)
        return BoxesOnly(model) if detector and rest.startswith(("maskrcnn", "keypointrcnn")) else model

    return build


class BoxesOnly(torch.nn.Module):
    """Keeps only boxes, labels and scores of a detector's output: Mask R-CNN's per-box full-image
    masks would otherwise cross to the host for every detection, and detect answers none of them."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{key: out[key] for key in ("boxes", "labels", "scores")} for out in self.detector(images)]
