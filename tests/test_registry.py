"""Every registered architecture builds and answers the output schema; every weights source loads."""

import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from shared import ImageLoader, ModelConfig, ModelWrapper, list_models
from shared.errors import ModelNotFound, WeightsUnavailable
from shared.labels import coco_categories, imagenet_categories
from shared.prepare import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from shared.registry import get_spec
from tests.images import small_jpeg

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SMALL_DETECTOR = {"min_size": 128, "max_size": 160}


def assert_classification_schema(predictions, labels, k):
    assert len(predictions) == k
    for p in predictions:
        assert set(p) == {"label", "index", "score"}
        assert 0 <= p["index"] < len(labels) and p["label"] == labels[p["index"]]
        assert 0.0 <= p["score"] <= 1.0


def test_registry_lists_the_four_models():
    assert list_models() == ["efficientnet_lite0", "resnet152", "vit_b16", "fasterrcnn_v2"]
    assert {get_spec(n).task for n in list_models()} == {"classify", "detect"}
    with pytest.raises(ModelNotFound):
        get_spec("alexnet")


# each alias, its source name and weights, and what the curated entry it replaced typed by hand
ALIASES = {
    "resnet152": (
        "torchvision:resnet152",
        "IMAGENET1K_V2",
        PreprocessSpec("resize_crop", 224, resize=232, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        imagenet_categories(),
        "classify",
        "ResNet",
    ),
    "fasterrcnn_v2": (
        "torchvision:fasterrcnn_resnet50_fpn_v2",
        "COCO_V1",
        PreprocessSpec("max_side", 1333, mean=(0.0,) * 3, std=(1.0,) * 3),
        coco_categories(),
        "detect",
        "FasterRCNN",
    ),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_alias_is_its_source_names_build(alias):
    source, weights, preprocess, labels, task, architecture = ALIASES[alias]
    for asked in ("default", "pretrained"):
        spec, of_source = get_spec(alias, weights=asked), get_spec(source, weights=weights)
        assert spec.preprocess == of_source.preprocess == preprocess
        assert spec.labels() == of_source.labels() == labels
        assert spec.task == of_source.task == task
        assert spec.pretrained_options == of_source.pretrained_options
        assert weights in spec.description == of_source.description
    assert get_spec(alias, weights="random").preprocess == preprocess
    built, of_source = get_spec(alias).build("random", {}), get_spec(source).build("random", {})
    assert type(built).__name__ == type(of_source).__name__ == architecture
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in of_source.state_dict().items()
    }


def test_an_alias_builds_and_prepares_for_its_own_weights_not_the_sources_default(monkeypatch):
    import shared.sources.torchvision_models as torchvision_models
    from shared.registry import REGISTRY, Alias

    monkeypatch.setitem(REGISTRY, "resnet152_v1", Alias("torchvision:resnet152", "IMAGENET1K_V1"))
    asked = []

    def pretrained(builder, member, **kwargs):
        asked.append(member.name)

    monkeypatch.setattr(torchvision_models, "torchvision_pretrained", pretrained)
    for weights in ("default", "pretrained"):
        spec = get_spec("resnet152_v1", weights=weights)
        assert spec.preprocess.resize == 256  # V1's transforms; the source's DEFAULT (V2) resizes to 232
        spec.build(weights, {})
    assert asked == ["IMAGENET1K_V1", "IMAGENET1K_V1"]
    assert get_spec("resnet152", weights="pretrained").preprocess.resize == 232


def test_resnet152_real_architecture_runs_an_image():
    wrapper = ModelWrapper(ModelConfig(name="resnet152", weights="random"))
    assert sum(p.numel() for p in wrapper.model.parameters()) == 60_192_808  # the real ResNet152
    assert_classification_schema(wrapper.classify_bytes(small_jpeg(), top_k=3), wrapper.labels, 3)


def test_vit_tiny_config_runs_through_transformers():
    wrapper = ModelWrapper(ModelConfig(name="vit_b16", weights="random", options=TINY_VIT))
    assert type(wrapper.model.hf_model).__name__ == "ViTForImageClassification"
    assert_classification_schema(wrapper.classify_bytes(small_jpeg(), top_k=5), wrapper.labels, 5)


def test_detector_returns_boxes_inside_the_original_image():
    wrapper = ModelWrapper(ModelConfig(name="fasterrcnn_v2", weights="random", options=SMALL_DETECTOR))
    torch.manual_seed(0)
    item = wrapper.load(small_jpeg(size=200))
    height, width = item.original_size
    (detections,) = wrapper.predict_batch([item], [{"score_threshold": 0.0}])
    assert detections, "a random detector at threshold 0 still proposes boxes"
    for d in detections:
        assert set(d) == {"label", "index", "score", "box"}
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert d["label"] == wrapper.labels[d["index"]]
    scores = sorted({d["score"] for d in detections})
    assert len(scores) >= 2, "need two distinct scores to test the threshold"
    threshold = scores[len(scores) // 2]  # a real score: >= keeps it, everything below goes
    (kept,) = wrapper.predict_batch([item], [{"score_threshold": threshold}])
    assert kept == [d for d in detections if d["score"] >= threshold]
    assert 0 < len(kept) < len(detections)


def test_torchvision_pretrained_path_reads_torch_home_cache(tmp_path, monkeypatch):
    """The real ``weights=ResNet152_Weights.DEFAULT`` path, fed from a cache file this test writes."""
    from torchvision.models import ResNet152_Weights, resnet152

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet152(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / os.path.basename(ResNet152_Weights.DEFAULT.url))
    wrapper = ModelWrapper(ModelConfig(name="resnet152", weights="pretrained"))
    assert torch.equal(wrapper.model.fc.weight, reference.fc.weight)


def test_missing_pretrained_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.models._api as api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)  # never download 230 MB
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="TORCH_HOME"):
        ModelWrapper(ModelConfig(name="resnet152"))


def test_missing_hf_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="HF_HOME"):
        ModelWrapper(ModelConfig(name="vit_b16"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_state_dict_file_loads(tmp_path, embedded_wrapper, suffix):
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in embedded_wrapper.model.state_dict().items()}
    path = tmp_path / f"lite0{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    from_file = ModelWrapper(ModelConfig(weights=str(path)))
    data = small_jpeg("coffee")
    assert from_file.classify_bytes(data) == embedded_wrapper.classify_bytes(data)


def test_vit_loads_a_save_pretrained_directory(tmp_path):
    source = ModelWrapper(ModelConfig(name="vit_b16", weights="random", options=TINY_VIT))
    source.model.hf_model.save_pretrained(tmp_path / "vit")
    loaded = ModelWrapper(ModelConfig(name="vit_b16", weights=str(tmp_path / "vit")))
    data = small_jpeg()
    assert loaded.classify_bytes(data) == source.classify_bytes(data)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pt")
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        ModelWrapper(ModelConfig(weights=str(tmp_path / "wrong.pt")))
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        ModelWrapper(ModelConfig(weights=str(tmp_path / "absent.pt")))


def test_random_weights_are_explicit_and_differ_from_embedded(embedded_wrapper):
    random = ModelWrapper(ModelConfig(weights="random"))
    assert not torch.equal(random.model._fc.weight, embedded_wrapper.model._fc.weight)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "alexnet"}, "unknown model"),
        ({"device": "cpu", "precision": "fp16"}, "needs device cuda"),
        ({"options": {"hidden_size": 8}, "name": "vit_b16"}, "architecture options"),
        ({"decode": {"max_pixels": 0}}, "greater than 0"),
        ({"decode": {"formats": ["png", "JPG"]}}, "unknown image format.*JPG.*Pillow reads: .*JPEG"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_config_is_validated_at_start_up(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**kwargs)


def test_decode_formats_are_pillow_names_in_any_case():
    assert ModelConfig(decode={"formats": ["jpeg", "mpo", "Png"]}).decode.formats == ("JPEG", "MPO", "PNG")
    from shared.config import pillow_formats

    assert set(ModelConfig().decode.formats) <= pillow_formats()  # the defaults are all readable here


def test_cpu_runs_fp32_channels_last_and_answers_like_nchw(embedded_wrapper):
    assert embedded_wrapper.dtype == torch.float32 and embedded_wrapper.channels_last
    nchw = ModelWrapper(ModelConfig(channels_last=False))
    assert not nchw.channels_last
    data = small_jpeg("rocket")
    a, b = embedded_wrapper.classify_bytes(data), nchw.classify_bytes(data)
    assert [p["index"] for p in a] == [p["index"] for p in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 1e-5


def test_bf16_runs_on_cpu_and_agrees_on_clear_photos(embedded_wrapper):
    """Opt-in bf16 on CPU (~2.5x on AVX-512 BF16). On confident photos it keeps fp32's top-1; on the
    benchmark's ambiguous crops it agreed on 92 % only (bench/RESULTS.md), so it is not the default."""
    fast = ModelWrapper(ModelConfig(precision="bf16"))
    assert fast.dtype == torch.bfloat16
    for name in ("chelsea", "coffee", "rocket", "motorcycle"):
        data = small_jpeg(name, size=256)
        assert fast.classify_bytes(data, 1)[0]["index"] == embedded_wrapper.classify_bytes(data, 1)[0]["index"]


def test_detection_keeps_the_full_size_of_large_jpegs():
    """No JPEG draft for detection: boxes must be in the original image's pixels."""
    from twinfer.samples import encode

    loader = ImageLoader(ModelConfig(name="fasterrcnn_v2", weights="random"))  # the CPU half only
    big = np.zeros((2000, 3000, 3), np.uint8)
    prepared = loader.load(encode(big))
    assert prepared.original_size == (2000, 3000)
    assert max(prepared.pixels.shape[1:]) == 1333
