"""Models from their own ecosystems, named ``<prefix>:<rest>`` (``shared.registry`` delegates here).

Each ``<prefix>_models`` module exposes ``spec_for(rest, *, revision, weights) -> ModelSpec``:
it reads only metadata (weights enums, hub or directory configs, timm's pretrained configs) and
never downloads; the spec's ``build`` loads weights when a replica or actor starts.

    torchvision_models  torchvision:<builder>       preprocessing and labels from the weights enum
    hf_models           hf:<hub id | directory>     from the image processor config and id2label
    timm_models         timm:<name[.tag]>           from timm's data config; ImageNet labels

A name a source cannot serve raises ``ModelNotFound`` (close matches listed where there are any);
weights that are neither cached nor local raise ``WeightsUnavailable`` saying where to put them.
"""

from __future__ import annotations

INTERPOLATIONS = ("bilinear", "bicubic")  # what PreprocessSpec can resize with


def interpolation_name(mode: object) -> str | None:
    """'bilinear' / 'bicubic' from a torchvision ``InterpolationMode``, a PIL resample code or a
    name; None for anything else."""
    name = str(getattr(mode, "value", mode)).lower()
    return name if name in INTERPOLATIONS else None
