"""The user's own models through both paths: a torchvision architecture, a Hugging Face directory,
a timm model and an embedding task, each served over HTTP and backfilled to Parquet, with the same
answers as the direct wrapper (to 1e-5). Weights are files written here, so every process loads the
same ones."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from ray import serve

from batch.config import BackfillConfig
from batch.pipeline import run_backfill
from deployments.app import build
from deployments.config import AppArgs
from shared import ModelConfig, ModelWrapper
from tests.images import small_jpeg

PHOTOS = ("chelsea", "rocket")
APP = "own-models"
TINY_VIT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=48, patch_size=16
)
LABELS = {0: "apple", 1: "boat", 2: "cat", 3: "dish"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict]:
    """Served name -> model config, one per source, plus an embedder."""
    import timm
    from torchvision.models import resnet18
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("own-models")
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), root / "resnet18.pt")
    torch.save(timm.create_model("test_resnet.r160_in1k", pretrained=False).state_dict(), root / "timm.pt")
    config = ViTConfig(**TINY_VIT, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    ViTForImageClassification(config).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        root / "vit"
    )
    return {
        "resnet18": {"name": "torchvision:resnet18", "weights": str(root / "resnet18.pt")},
        "my-vit": {"name": f"hf:{root / 'vit'}"},
        "tiny-timm": {"name": "timm:test_resnet.r160_in1k", "weights": str(root / "timm.pt")},
        "resnet18-embed": {"name": "torchvision:resnet18", "weights": str(root / "resnet18.pt"), "task": "embed"},
    }


@pytest.fixture(scope="module")
def direct(models) -> dict[str, ModelWrapper]:
    return {served: ModelWrapper(ModelConfig(**config)) for served, config in models.items()}


@pytest.fixture(scope="module")
def client(serve_url, models):
    import httpx

    entries = [
        {
            "name": served,
            "model": config,
            "num_cpus": 0.25,
            "max_ongoing_requests": 8,
            "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.01, "max_concurrent_batches": 1},
        }
        for served, config in models.items()
    ]
    serve.run(
        build(AppArgs.model_validate({"ingress": {"num_cpus": 0.25, "decode_threads": 2}, "models": entries})),
        name=APP,
        route_prefix=f"/{APP}",
    )
    with httpx.Client(base_url=f"{serve_url}/{APP}", timeout=120) as http:
        yield http
    serve.delete(APP)


def assert_same_answer(got, want) -> None:
    if isinstance(want[0], dict):  # classification: labels and indices equal, scores within 1e-5
        assert [(p["label"], p["index"]) for p in got] == [(p["label"], p["index"]) for p in want]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5, rtol=0)
    else:  # an embedding
        assert np.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("served", ["resnet18", "my-vit", "tiny-timm", "resnet18-embed"])
def test_served_over_http_with_the_direct_wrappers_answers(client, direct, served):
    wrapper = direct[served]
    task = wrapper.task
    for photo in PHOTOS:
        data = small_jpeg(photo)
        response = client.post(f"/v1/models/{served}/{task.name}", content=data, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        (want,) = wrapper.predict_batch([wrapper.load(data)])
        assert_same_answer(response.json()[task.response_key], want)
    if task.name == "classify":
        assert {p["label"] for p in response.json()["predictions"]} <= set(wrapper.labels)


@pytest.mark.parametrize("served", ["resnet18", "my-vit", "resnet18-embed"])
def test_backfilled_to_parquet_with_the_direct_wrappers_answers(ray_session, tmp_path, models, direct, served):
    source = tmp_path / "in"
    source.mkdir()
    files = {f"{photo}.jpg": small_jpeg(photo) for photo in PHOTOS}
    for name, data in files.items():
        (source / name).write_bytes(data)
    config = BackfillConfig(
        model=ModelConfig(**models[served]), input=str(source), output=str(tmp_path / "out"), progress=False
    )
    summary = run_backfill(config)
    assert summary["rows"] == len(files) and summary["errors"] == 0
    wrapper = direct[served]
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in pq.read_table(tmp_path / "out").to_pylist()}
    for name, data in files.items():
        (want,) = wrapper.predict_batch([wrapper.load(data)], [{"top_k": 5}])
        assert_same_answer(wrapper.task.answer_from_row(rows[name]), want)
