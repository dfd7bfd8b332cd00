"""Models named from their ecosystems (torchvision:, hf:, timm:): each builds from random weights, a
tiny saved model or a file the test writes; preprocessing and labels are checked against the
library's own objects; bad names and missing weights fail at start-up, saying what to do, without
touching the network."""

from __future__ import annotations

import json
import socket
import sys
import urllib.error

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from shared import ModelConfig, ModelWrapper
from shared.errors import ModelNotFound, WeightsUnavailable
from shared.labels import imagenet_categories
from shared.prepare import PreprocessSpec, prepare_image
from shared.registry import _source_spec, get_spec
from tests.images import small_jpeg, small_photo

SMALL_DETECTOR = {"min_size": 128, "max_size": 160, "box_score_thresh": 0.0}
TINY_TIMM = "timm:test_resnet.r160_in1k"  # timm's own test-sized models (~0.5 M parameters)


@pytest.fixture(autouse=True)
def fresh_specs():
    """Specs are cached by name; tests change environments and libraries under them."""
    _source_spec.cache_clear()
    yield
    _source_spec.cache_clear()


class NetworkTouched(BaseException):
    """Not an Exception, so no library's ``except Exception`` swallows it."""


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and DNS lookup fails loudly and is recorded."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkTouched(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def normalised(pixels: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """What the wrapper feeds the model for prepared uint8 CHW pixels (float32, CPU)."""
    x = torch.from_numpy(pixels).float() / 255.0
    return (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)


def assert_classified(predictions, labels, k):
    assert len(predictions) == k
    assert [p["label"] for p in predictions] == [labels[p["index"]] for p in predictions]
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)


# ---- torchvision: ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A random ResNet-18 state dict (built once: its initialisation is the slow part)."""
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("torchvision") / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_torchvision_classifier_builds_and_classifies(resnet18_file):
    from torchvision.models import ResNet18_Weights, resnet18

    wrapper = ModelWrapper(ModelConfig(name="torchvision:resnet18", weights="random"))
    assert type(wrapper.model).__name__ == "ResNet"
    assert wrapper.labels == tuple(ResNet18_Weights.DEFAULT.meta["categories"])
    item = wrapper.load(small_jpeg())
    (predictions,) = wrapper.predict_batch([item], [{"top_k": 3}])
    assert_classified(predictions, wrapper.labels, 3)

    from_file = ModelWrapper(ModelConfig(name="torchvision:resnet18", weights=str(resnet18_file)))
    reference = resnet18(weights=None).eval()
    reference.load_state_dict(torch.load(resnet18_file))
    with torch.inference_mode():
        expected = reference(normalised(item.pixels, from_file.spec.preprocess)[None]).softmax(-1)
    assert torch.allclose(from_file.predict([item]), expected, atol=1e-5)


def test_torchvision_detector_builds_and_detects():
    from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_320_FPN_Weights as Weights

    name = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(0)
    wrapper = ModelWrapper(ModelConfig(name=name, weights="random", options=SMALL_DETECTOR))
    assert wrapper.spec.task == "detect" and wrapper.labels == tuple(Weights.DEFAULT.meta["categories"])
    assert wrapper.spec.preprocess == get_spec("fasterrcnn_v2").preprocess  # resized inside the model
    item = wrapper.load(small_jpeg(size=200))
    height, width = item.original_size
    (detections,) = wrapper.predict_batch([item], [{"score_threshold": 0.0}])
    assert detections, "a random detector keeping every score proposes boxes"
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert d["label"] == wrapper.labels[d["index"]]


def test_mask_and_keypoint_rcnn_answer_boxes_only(monkeypatch):
    """Their per-box masks are image-sized; detect answers none of them, so they never leave the
    model. (A stand-in for the ResNet-50 builder: building the real one takes many seconds.)"""
    import torchvision.models as models

    class Stub(torch.nn.Module):
        def forward(self, images):
            return [
                {
                    "boxes": torch.zeros(1, 4),
                    "labels": torch.ones(1, dtype=torch.int64),
                    "scores": torch.ones(1),
                    "masks": torch.zeros(1, 1, *image.shape[1:]),
                }
                for image in images
            ]

    calls = []
    monkeypatch.setattr(models, "get_model_builder", lambda name: calls.append(name) or (lambda **kwargs: Stub()))
    for name in ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"):
        model = get_spec(f"torchvision:{name}", weights="random").build("random", {})
        (out,) = model([torch.rand(3, 8, 8)])
        assert set(out) == {"boxes", "labels", "scores"}
    assert calls == ["maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"]


@pytest.mark.parametrize(
    "builder, weights",
    [
        ("resnet50", "IMAGENET1K_V1"),
        ("resnet50", "IMAGENET1K_V2"),
        ("convnext_tiny", "default"),
        ("efficientnet_b3", "pretrained"),  # bicubic, 320 -> 300
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"),  # bicubic, 384 without a crop margin
    ],
)
def test_torchvision_preprocessing_and_labels_are_the_weights_enums(builder, weights):
    from torchvision.models import get_model_weights

    enum = get_model_weights(builder)
    member = enum.DEFAULT if weights in ("default", "pretrained") else enum[weights]
    spec = get_spec(f"torchvision:{builder}", weights=weights)
    transforms = member.transforms()
    assert (spec.preprocess.size, spec.preprocess.resize) == (transforms.crop_size[0], transforms.resize_size[0])
    assert spec.preprocess.interpolation == transforms.interpolation.value
    assert spec.labels() == tuple(member.meta["categories"])
    image = small_photo("coffee", size=300)
    ours = normalised(prepare_image(image, spec.preprocess).pixels, spec.preprocess)
    theirs = transforms(torch.from_numpy(image).permute(2, 0, 1))
    assert ours.shape == theirs.shape
    # torchvision's v1 resize rounds uint8 differently (bicubic overshoot most): ~0.15 grey levels
    # on average; a wrong size, crop or normalisation is tens
    assert (ours - theirs).abs().mean() < 0.01


def test_torchvision_v1_and_v2_weights_resize_as_their_enums_say():
    from torchvision.models import ResNet50_Weights

    v1 = get_spec("torchvision:resnet50", weights="IMAGENET1K_V1").preprocess
    v2 = get_spec("torchvision:resnet50", weights="IMAGENET1K_V2").preprocess
    assert v1.resize == ResNet50_Weights.IMAGENET1K_V1.transforms().resize_size[0]
    assert v2.resize == ResNet50_Weights.IMAGENET1K_V2.transforms().resize_size[0]
    assert v1 != v2
    # random and a local file keep DEFAULT's preprocessing (V2 for ResNet-50)
    assert get_spec("torchvision:resnet50", weights="random").preprocess == v2
    assert get_spec("torchvision:resnet50", weights="/models/r50.pt").preprocess == v2
    # the curated resnet152 and torchvision:resnet152 prepare images alike
    assert get_spec("torchvision:resnet152").preprocess == get_spec("resnet152").preprocess


def test_torchvision_weights_member_loads_from_torch_home(tmp_path, monkeypatch, resnet18_file):
    """weights: IMAGENET1K_V1 goes through torchvision's own loader, fed from a cache file written here."""
    import os
    import shutil

    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(resnet18_file, checkpoints / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url))
    wrapper = ModelWrapper(ModelConfig(name="torchvision:resnet18", weights="IMAGENET1K_V1"))
    assert torch.equal(wrapper.model.fc.weight, torch.load(resnet18_file)["fc.weight"])


def test_torchvision_offline_pretrained_says_where_to_put_the_file(tmp_path, monkeypatch, no_network):
    from torchvision.models import ResNet18_Weights

    downloads = []

    def offline(url, *args, **kwargs):
        downloads.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        WeightsUnavailable, match=r"copy resnet18-f37072fd\.pth to .*hub/checkpoints.*TORCH_HOME"
    ) as info:
        ModelWrapper(ModelConfig(name="torchvision:resnet18"))
    assert str(tmp_path) in str(info.value)
    assert downloads == [ResNet18_Weights.DEFAULT.url] and no_network == []


# ---- hf: -------------------------------------------------------------------------------------------------

TINY_VIT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=48, patch_size=16
)
LABELS = {0: "cat", 1: "dog", 2: "teapot", 3: "bicycle"}


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A save_pretrained() directory: a 4-class ViT and a processor that differs from ViT's defaults."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(**TINY_VIT, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(
        size={"height": 48, "width": 48}, image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3], resample=3
    ).save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


def test_hf_directory_serves_its_labels_preprocessing_and_logits(tiny_vit_dir):
    from transformers import AutoImageProcessor, ViTForImageClassification

    processor = AutoImageProcessor.from_pretrained(tiny_vit_dir)
    reference = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    wrapper = ModelWrapper(ModelConfig(name=f"hf:{tiny_vit_dir}"))
    assert wrapper.labels == tuple(reference.config.id2label[i] for i in range(4)) == tuple(LABELS.values())
    pre = wrapper.spec.preprocess
    assert (pre.mode, pre.size, pre.interpolation) == ("resize_exact", processor.size["height"], "bicubic")
    assert np.allclose(pre.mean, processor.image_mean) and np.allclose(pre.std, processor.image_std)
    assert not wrapper.spec.revisioned and str(tiny_vit_dir) in wrapper.spec.description

    item = wrapper.load(small_jpeg(size=120))
    pixels = processor(images=torch.from_numpy(item.pixels), do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        expected = reference(pixel_values=pixels).logits
        assert torch.allclose(wrapper.model(normalised(item.pixels, pre)[None]), expected, atol=1e-5)
    (predictions,) = wrapper.predict_batch([item], [{"top_k": 3}])
    assert_classified(predictions, wrapper.labels, 3)
    assert predictions[0]["index"] == int(expected.argmax())


def test_hf_random_and_state_dict_weights(tiny_vit_dir, tmp_path):
    from safetensors.torch import save_file

    pretrained = ModelWrapper(ModelConfig(name=f"hf:{tiny_vit_dir}"))
    state = {k: v.contiguous() for k, v in pretrained.model.hf_model.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    from_file = ModelWrapper(ModelConfig(name=f"hf:{tiny_vit_dir}", weights=str(tmp_path / "vit.safetensors")))
    random = ModelWrapper(ModelConfig(name=f"hf:{tiny_vit_dir}", weights="random"))
    item = pretrained.load(small_jpeg())
    assert torch.equal(from_file.predict([item]), pretrained.predict([item]))
    assert not torch.equal(random.model.hf_model.classifier.weight, pretrained.model.hf_model.classifier.weight)
    assert random.labels == pretrained.labels


def SQUARE(side: int) -> dict:
    return {"height": side, "width": side}


@pytest.mark.parametrize(
    "processor, kwargs, mode",
    [
        ("ViTImageProcessor", {"size": SQUARE(64), "resample": 2}, "resize_exact"),
        ("DeiTImageProcessor", {}, "resize_exact"),  # squash to 256, crop 224
        ("BitImageProcessor", {"size": {"shortest_edge": 256}}, "resize_crop"),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}, "resize_crop"),
        ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}, "resize_exact"),  # no crop from 384 on
        ("LevitImageProcessor", {}, "resize_crop"),
        ("PoolFormerImageProcessor", {}, "resize_crop"),
        (
            "EfficientNetImageProcessor",
            {"size": SQUARE(240), "crop_size": SQUARE(224), "do_center_crop": True},
            "resize_exact",
        ),
        ("EfficientNetImageProcessor", {"rescale_offset": True, "include_top": False}, "resize_exact"),
    ],
)
def test_hf_processor_preprocessing_matches_the_processor(processor, kwargs, mode):
    """Ours (resize, crop, then the device's normalisation) against the processor run on the same
    photo: exact with transformers' torchvision backend, within resampling noise with its PIL one."""
    import transformers

    from shared.sources.hf_models import processor_preprocess

    processor = getattr(transformers, processor)(**kwargs)
    spec, notes = processor_preprocess(processor)
    assert spec.mode == mode and not notes
    image = small_photo("chelsea", size=300)  # 300 x 200: crops and squashes both show
    theirs = processor(images=torch.from_numpy(image).permute(2, 0, 1), return_tensors="pt")["pixel_values"][0]
    ours = normalised(prepare_image(image, spec).pixels, spec)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 0.02


@pytest.mark.parametrize(
    "processor, kwargs, message",
    [
        ("ViTImageProcessor", {"size": {"height": 224, "width": 160}}, "non-square 224x160"),
        ("ViTImageProcessor", {"resample": 0}, "nearest"),
        ("MobileViTImageProcessor", {}, "do_flip_channel_order"),
        ("ViTImageProcessor", {"do_resize": False}, "does not resize"),
        ("TextNetImageProcessor", {}, "does not know its resize rules"),
    ],
)
def test_hf_processors_twinfer_cannot_follow_are_refused(processor, kwargs, message):
    import transformers

    from shared.sources.hf_models import processor_preprocess

    with pytest.raises(ModelNotFound, match=message):
        processor_preprocess(getattr(transformers, processor)(**kwargs))


def test_hf_lanczos_is_served_as_bicubic_and_says_so():
    from transformers import ViTImageProcessor

    from shared.sources.hf_models import processor_preprocess

    spec, notes = processor_preprocess(ViTImageProcessor(resample=1))
    assert spec.interpolation == "bicubic" and notes == ["its lanczos resampling is served as bicubic"]


def test_hf_revision_reaches_every_from_pretrained(tiny_vit_dir, monkeypatch):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    calls = []

    def capture(cls):
        original = cls.from_pretrained

        def from_pretrained(source, **kwargs):
            if source != "acme/tiny-vit":  # transformers' own inner calls, already redirected
                return original(source, **kwargs)
            calls.append((cls.__name__, kwargs.pop("revision", None), kwargs.pop("trust_remote_code", None)))
            return original(tiny_vit_dir, **kwargs)  # the hub, played by the directory

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    for cls in (AutoConfig, AutoImageProcessor, AutoModelForImageClassification):
        capture(cls)
    config = ModelConfig(name="hf:acme/tiny-vit", revision="0123abc")
    assert config.spec.revisioned and "acme/tiny-vit@0123abc" in config.spec.description
    wrapper = ModelWrapper(config)
    assert wrapper.labels == tuple(LABELS.values())
    assert {c[0] for c in calls} == {"AutoConfig", "AutoImageProcessor", "AutoModelForImageClassification"}
    assert all(c[1:] == ("0123abc", False) for c in calls), calls


def test_hf_offline_and_not_cached_says_how_to_provide_it(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="HF_HOME.*HF_HUB_OFFLINE=1.*save_pretrained"):
        ModelConfig(name="hf:google/vit-base-patch16-224")
    assert no_network == []


def test_hf_models_needing_their_own_code_or_not_classifiers_are_refused(tmp_path):
    from transformers import BertConfig

    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(
        json.dumps(
            {
                "model_type": "acme-vision",
                "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig"},
            }
        )
    )
    with pytest.raises(ValidationError, match="trust_remote_code"):
        ModelConfig(name=f"hf:{custom}")
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValidationError, match="'bert' model.*not one AutoModelForImageClassification builds"):
        ModelConfig(name=f"hf:{tmp_path / 'bert'}")


def test_hf_directory_without_a_processor_is_refused(tiny_vit_dir):
    (tiny_vit_dir / "preprocessor_config.json").unlink()
    with pytest.raises(ValidationError, match="no image processor"):
        ModelConfig(name=f"hf:{tiny_vit_dir}")


# ---- timm: -----------------------------------------------------------------------------------------------


def test_timm_model_builds_and_classifies():
    import timm

    wrapper = ModelWrapper(ModelConfig(name=TINY_TIMM, weights="random"))
    assert wrapper.labels == imagenet_categories()  # the curated models' names, for the same classes
    data = timm.data.resolve_model_data_config(timm.create_model(TINY_TIMM.removeprefix("timm:")))
    pre = wrapper.spec.preprocess
    assert (pre.mode, pre.size, pre.interpolation) == ("resize_crop", data["input_size"][1], data["interpolation"])
    assert pre.resize == int(data["input_size"][1] / data["crop_pct"])
    assert (pre.mean, pre.std) == (tuple(data["mean"]), tuple(data["std"]))
    (predictions,) = wrapper.predict_batch([wrapper.load(small_jpeg())], [{"top_k": 3}])
    assert_classified(predictions, wrapper.labels, 3)


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50.tv_in1k", "vit_base_patch16_224.augreg_in21k", "convnext_tiny.fb_in22k_ft_in1k_384"]
)
def test_timm_preprocessing_is_its_eval_transform(name):
    """Spec fields from timm's model data config, and pixels that agree with timm's own eval transform."""
    import timm
    from PIL import Image

    with torch.device("meta"):  # the config without the weights' memory
        model = timm.create_model(name)
    data = timm.data.resolve_model_data_config(model)
    spec = get_spec(f"timm:{name}").preprocess
    assert spec.size == data["input_size"][1] and spec.interpolation == data["interpolation"]
    assert (spec.resize or spec.size) == int(data["input_size"][1] / data["crop_pct"])
    assert spec.mode == {"center": "resize_crop", "squash": "resize_exact"}[data["crop_mode"]]
    image = small_photo("coffee", size=400)
    theirs = timm.data.create_transform(**data)(Image.fromarray(image))  # PIL resampling, so not bit-exact
    ours = normalised(prepare_image(image, spec).pixels, spec)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean() < 0.02


def test_timm_labels_for_other_imagenet_subsets_and_unknown_heads():
    from timm.data import ImageNetInfo

    from shared.sources.timm_models import class_names

    in21k = get_spec("timm:vit_base_patch16_224.augreg_in21k").labels()
    assert len(in21k) == 21843 and in21k[:2] == tuple(
        d.split(",")[0] for d in ImageNetInfo("imagenet-21k-goog").label_descriptions()[:2]
    )
    assert class_names(10) == tuple(f"class_{i}" for i in range(10))


def test_timm_squash_crop_mode_squashes():
    import timm

    name = next(n for n in timm.list_models(pretrained=True) if timm.models.get_pretrained_cfg(n).crop_mode == "squash")
    spec = get_spec(f"timm:{name}").preprocess
    assert spec.mode == "resize_exact"


def test_timm_without_timm_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValidationError, match=r"pip install 'twinfer\[timm\]'"):
        ModelConfig(name="timm:resnet18")


def test_timm_offline_pretrained_says_how_to_provide_it(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(
        WeightsUnavailable, match=r"HF_HOME\) with timm/test_resnet\.r160_in1k and set HF_HUB_OFFLINE=1"
    ):
        ModelWrapper(ModelConfig(name=TINY_TIMM))
    assert no_network == []


def test_timm_local_state_dict_loads(tmp_path):
    import timm

    reference = timm.create_model("test_resnet.r160_in1k").eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.pth")
    wrapper = ModelWrapper(ModelConfig(name=TINY_TIMM, weights=str(tmp_path / "tiny.pth")))
    item = wrapper.load(small_jpeg())
    with torch.inference_mode():
        expected = reference(normalised(item.pixels, wrapper.spec.preprocess)[None]).softmax(-1)
    assert torch.allclose(wrapper.predict([item]), expected, atol=1e-5)


# ---- every source --------------------------------------------------------------------------------------


def test_embeddings_are_the_penultimate_features_l2_normalised(tmp_path, tiny_vit_dir, resnet18_file):
    """One model per source: the answer is what fed the classifier head, at its width, unit length."""
    import timm
    from torchvision.models import resnet18
    from transformers import ViTForImageClassification

    def pooled_input_of(model, head, x):
        seen = []
        handle = head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
        with torch.inference_mode():
            model(x)
        handle.remove()
        return seen[0]

    tv = resnet18(weights=None).eval()
    tv.load_state_dict(torch.load(resnet18_file))
    tm = timm.create_model("test_convnext.r160_in1k").eval()
    torch.save(tm.state_dict(), tmp_path / "convnext.pt")
    vit = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    cases = [
        ("torchvision:resnet18", str(resnet18_file), 512, lambda x: pooled_input_of(tv, tv.fc, x)),
        (
            "timm:test_convnext.r160_in1k",
            str(tmp_path / "convnext.pt"),
            tm.num_features,
            lambda x: tm.forward_head(tm.forward_features(x), pre_logits=True),
        ),
        (f"hf:{tiny_vit_dir}", "default", TINY_VIT["hidden_size"], lambda x: pooled_input_of(vit, vit.classifier, x)),
    ]
    data = small_jpeg("rocket")
    for name, weights, dim, features in cases:
        wrapper = ModelWrapper(ModelConfig(name=name, weights=weights, task="embed"))
        item = wrapper.load(data)
        (embedding,) = wrapper.predict_batch([item])
        assert wrapper.output_dim == dim == len(embedding), name
        assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-5, name
        with torch.inference_mode():
            expected = torch.nn.functional.normalize(
                features(normalised(item.pixels, wrapper.spec.preprocess)[None]), dim=1
            )[0]
        assert torch.allclose(torch.tensor(embedding), expected, atol=1e-5), name


@pytest.mark.parametrize(
    "name, message",
    [
        ("torchvision:resnt18", r"no classifier or detector 'resnt18' \(did you mean resnet18"),
        ("torchvision:fcn_resnet50", "segmentation model"),
        ("torchvision:quantized_resnet18", r"quantized model.*torchvision:resnet18"),
        ("tv:resnet18", "unknown model 'tv:resnet18'.*torchvision:<builder>"),
        ("hf:/no/such/dir", "no such directory, and it is not a hub id"),
        ("hf:not a hub id!", "not a hub id"),
        ("timm:resnt18", r"timm has no model 'resnt18' \(did you mean resnet18"),
        ("timm:resnet18.a9_in1k", r"no pretrained tag 'a9_in1k' for resnet18 \(did you mean .*its tags: a1_in1k"),
        ("timm:vit_base_patch14_dinov2.lvd142m", "has no classifier"),
    ],
)
def test_bad_names_fail_at_start_up_with_close_matches(name, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(name=name)


def test_a_missing_directory_lists_its_near_neighbours(tiny_vit_dir):
    with pytest.raises(ValidationError, match=r"no such directory \(did you mean vit\?\)"):
        ModelConfig(name=f"hf:{tiny_vit_dir.parent / 'vti'}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"name": "torchvision:resnet50", "weights": "IMAGENET1K_V3"},
            r"no weights 'IMAGENET1K_V3' \(did you mean IMAGENET1K_V2",
        ),
        ({"name": "torchvision:vgg16", "weights": "IMAGENET1K_FEATURES"}, "no class head"),
        ({"name": "torchvision:resnet18", "revision": "abc"}, "revision is for Hugging Face hub models"),
        ({"name": "torchvision:resnet18", "task": "detect"}, "classify model"),
    ],
)
def test_config_mistakes_with_source_models_are_refused(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**kwargs)


def test_specs_are_cached_per_name_and_weights():
    assert get_spec("torchvision:resnet18") is get_spec("torchvision:resnet18")
    assert get_spec("torchvision:resnet18", weights="random") is not get_spec("torchvision:resnet18")
    assert "resnet18" in get_spec("torchvision:resnet18").description


def test_a_distilled_timm_model_embeds_both_heads_inputs_averaged():
    """Two heads averaged (DeiT distilled): taking off the last Linear would leave one head in place;
    timm's own reset_classifier gives the features both heads read."""
    import timm

    wrapper = ModelWrapper(ModelConfig(name="timm:deit_tiny_distilled_patch16_224", weights="random", task="embed"))
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    reference.load_state_dict(wrapper.model.state_dict(), strict=False)  # the heads are gone from the wrapper's
    item = wrapper.load(small_jpeg("coffee"))
    (embedding,) = wrapper.predict_batch([item])
    with torch.inference_mode():
        x = normalised(item.pixels, wrapper.spec.preprocess)[None]
        expected = torch.nn.functional.normalize(
            reference.forward_head(reference.forward_features(x), pre_logits=True), dim=1
        )[0]
    assert wrapper.output_dim == reference.num_features == len(embedding)
    assert torch.allclose(torch.tensor(embedding), expected, atol=1e-5)
