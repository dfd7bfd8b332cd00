"""Real backfills for the comparison and report tests: pairs of outputs over the same inputs.

tests/conftest.py registers this module as a plugin, so a test or fixture asks for these by name
(session scope: each pair is backfilled once per test process, whichever modules ask); name its
module in tests/scheduling.py's ``GROUPS`` so that ``make test`` runs it on the worker that has them.

- ``planted_inputs``: sample-photo crops filed under the class the embedded model gives the whole
  photo (so the labels are right for most crops, not all), an unlabelled file and a broken one.
- ``classify_pair``: A is the embedded EfficientNet-Lite0; B a ResNet-18 with random weights (a
  file written here). Before B runs, one input is removed and another added: each output has an
  input the other lacks.
- ``embed_pair``: the embedded model's embeddings in fp32 (A) and bf16 (B), same inputs.
- ``detect_pair``: one random-weight detector (a weights file) at two input sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from batch.config import BackfillConfig
from batch.pipeline import run_backfill
from shared import ModelConfig
from shared.labels import imagenet_wnids
from tests import images
from tests.test_batch_pipeline import crops, thumbnail_jpeg, write_tree
from twinfer.samples import SAMPLE_NAMES, sample_array

SETTINGS = dict(batch_size=4, rows_per_call=4, min_rows_per_file=8, progress=False)
REMOVED_BEFORE_B = "loose.jpg"
ADDED_BEFORE_B = "extra.jpg"
DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
DETECTOR_OPTIONS = {"box_score_thresh": 0.0, "box_detections_per_img": 8}


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    inputs: Path


def backfill(model: ModelConfig, source: Path, output: Path) -> Path:
    run_backfill(BackfillConfig(model=model, input=str(source), output=str(output), **SETTINGS))
    return output


@pytest.fixture(scope="session")
def planted_inputs(tmp_path_factory, embedded_wrapper) -> Path:
    files: dict[str, bytes] = {}
    for name in SAMPLE_NAMES:
        truth = embedded_wrapper.classify_bytes(thumbnail_jpeg(sample_array(name)), top_k=1)[0]["index"]
        files.update({f"{imagenet_wnids()[truth]}/{file}": data for file, data in crops(name).items()})
    files[REMOVED_BEFORE_B] = images.small_jpeg("rocket", 64)  # no class folder: no label
    files["broken/corrupt.jpg"] = images.corrupt_jpeg()
    root = tmp_path_factory.mktemp("pairs") / "images"
    write_tree(root, files)
    return root


@pytest.fixture(scope="session")
def classify_pair(ray_session, planted_inputs, tmp_path_factory) -> Pair:
    from torchvision.models import resnet18

    out = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), out / "resnet18.pt")
    source = tmp_path_factory.mktemp("classify-inputs") / "images"
    write_tree(source, {p.relative_to(planted_inputs).as_posix(): p.read_bytes() for p in planted_inputs.rglob("*.*")})
    a = backfill(ModelConfig(), source, out / "lite0")
    (source / REMOVED_BEFORE_B).unlink()
    (source / ADDED_BEFORE_B).write_bytes(images.small_jpeg("coffee", 72))
    b = backfill(ModelConfig(name="torchvision:resnet18", weights=str(out / "resnet18.pt")), source, out / "resnet18")
    return Pair(a, b, source)


@pytest.fixture(scope="session")
def embed_pair(ray_session, planted_inputs, tmp_path_factory) -> Pair:
    out = tmp_path_factory.mktemp("embed")
    a = backfill(ModelConfig(task="embed", precision="fp32"), planted_inputs, out / "lite0-fp32")
    b = backfill(ModelConfig(task="embed", precision="bf16"), planted_inputs, out / "lite0-bf16")
    return Pair(a, b, planted_inputs)


@pytest.fixture(scope="session")
def detect_pair(ray_session, tmp_path_factory) -> Pair:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    out = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    weights = out / "detector.pt"
    torch.save(fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).state_dict(), weights)
    source = out / "images"
    write_tree(
        source, {f"street/{name}.jpg": images.small_jpeg(name, 160) for name in ("astronaut", "coffee", "motorcycle")}
    )

    def detector(min_size: int) -> ModelConfig:
        options = {**DETECTOR_OPTIONS, "min_size": min_size, "max_size": min_size + 32}
        return ModelConfig(name=DETECTOR, weights=str(weights), options=options, score_threshold=0.0)

    a = backfill(detector(128), source, out / "at-128")
    b = backfill(detector(160), source, out / "at-160")
    return Pair(a, b, source)
