"""The config vocabulary both paths share, validated at start-up (pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.decode import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_JPEG_SCANS,
    DEFAULT_MAX_PIXELS,
    JPEG_SCANS_AT_MAX_PIXELS,
)
from shared.errors import ModelNotFound
from shared.registry import DEFAULT_MODEL, ModelSpec, get_spec
from shared.tasks import TASKS, Task
from shared.weights import SPECIAL


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)


class DecodeConfig(StrictModel):
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="pixel cap, checked from the header")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0, description="encoded-size cap per image (both paths)")
    max_jpeg_scans: int = Field(
        DEFAULT_MAX_JPEG_SCANS,
        gt=0,
        description="most SOS markers (scans) a JPEG/MPO may hold, counted in the bytes before decoding: "
        "libjpeg walks every block once per scan. Real encoders write 1 (baseline) or 6-18 (libjpeg's "
        "progressive scripts: grey 6, colour 10, CMYK 18; optimising encoders stay in the tens); thumbnails "
        "and an MPO's later pictures count too. Over it: image_too_complex (413)",
    )
    max_jpeg_scan_pixels: int | None = Field(
        None,
        gt=0,
        description=f"cap on JPEG decode work, scans x pixels (JPEG-compressed TIFF: scans x strip/tile "
        f"pixels); None = {JPEG_SCANS_AT_MAX_PIXELS} x max_pixels (960M by default; the decode time it "
        f"allows at worst is in bench/RESULTS.md). Over it: image_too_complex (413)",
    )
    formats: tuple[str, ...] = tuple(sorted(DEFAULT_FORMATS))
    draft: bool = Field(True, description="let libjpeg decode JPEGs at a reduced scale (Pillow draft)")
    on_device: bool = Field(
        False,
        description="classification on CUDA: CPU workers check JPEG headers only and the model process decodes "
        "JPEGs in batches with nvJPEG, then resizes on the GPU; other formats still decode on CPU workers",
    )

    @field_validator("formats")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one image format must be accepted")
        formats = tuple(f.upper() for f in value)
        known = pillow_formats()
        unknown = [f for f in formats if f not in known]
        if unknown:  # e.g. "JPG": Pillow calls it JPEG, and the typo would refuse every JPEG
            raise ValueError(f"unknown image format(s) {', '.join(unknown)}; Pillow reads: {', '.join(sorted(known))}")
        return formats


def pillow_formats() -> frozenset[str]:
    """Format names Pillow can open here (``Image.format`` values); MPO comes from the JPEG plugin."""
    from PIL import Image

    Image.init()
    return frozenset(Image.OPEN) | {"MPO"}


class ModelConfig(StrictModel):
    name: str = Field(
        DEFAULT_MODEL,
        description="a curated name, or torchvision:<builder>, hf:<hub id or save_pretrained directory>, timm:<name>",
    )
    task: Literal["auto", "classify", "detect", "embed"] = Field(
        "auto", description="auto = what the model's head does; any classifier can also embed"
    )
    weights: str = Field(
        "default",
        description="default | pretrained | random | a local path (| a torchvision weights name, e.g. IMAGENET1K_V2)",
    )
    revision: str | None = Field(None, description="hf: models: the hub revision (commit, tag or branch) to load")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda where the process reserves a GPU (Ray) or sees one (outside Ray), else cpu"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = fp16 on CUDA, fp32 on CPU; bf16 also runs on CPUs with AVX-512 BF16/AMX"
    )
    channels_last: bool = Field(True, description="NHWC memory format for classification and embedding models")
    cpu_threads: int | Literal["auto"] = Field(
        "auto",
        description="torch intra-op threads on CPU; auto = a backfill's model actors share the node's cores, "
        "a Serve replica keeps the threads Ray gives its CPU reservation",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile (static shapes, frozen weights) for classification and embedding, every batch "
        "size warmed at replica/actor start and batches padded to a warmed size; needs a C++ compiler on CPU. "
        "auto = on for CPU servers, and for CPU backfills large enough to pay back the start-up; off on CUDA",
    )
    cudnn_benchmark: bool = Field(
        True,
        description="classification on CUDA: cuDNN autotunes its kernels for each warmed batch size at start-up "
        "(batches are padded to those sizes); process-wide, off for detection, whose input sizes vary",
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="detection: default minimum score")
    options: dict[str, Any] = Field(default_factory=dict, description="architecture overrides (random weights)")
    decode: DecodeConfig = DecodeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        spec = self.spec  # an unknown name fails here, with close matches
        task = TASKS[self.resolved_task]
        if task.head != spec.task:
            raise ValueError(f"model {self.name!r} is a {spec.task} model; it cannot serve task {self.task!r}")
        if self.revision is not None and not spec.revisioned:
            raise ValueError(f"revision is for Hugging Face hub models (hf:...); {self.name!r} has none")
        if self.device == "cpu" and self.precision == "fp16":
            raise ValueError("precision fp16 needs device cuda; on CPU use fp32 or bf16")
        changes_weights = set(self.options) - spec.pretrained_options
        if changes_weights and self.weights in ("default", "pretrained"):
            raise ValueError(
                f"architecture options {sorted(changes_weights)} change the model; "
                "use them with weights 'random' or a path"
            )
        if self.compile is True and not task.fixed_size:
            raise ValueError(
                f"compile is for classification and embedding (fixed-size inputs); task {task.name!r} takes any size"
            )
        if self.decode.on_device and (self.device != "cuda" or not task.fixed_size):
            # on a CPU the model process would decode serially, the very thing the CPU workers are for
            raise ValueError("decode.on_device is for classification and embedding models with device 'cuda'")
        if self.weights not in SPECIAL and not self.weights.strip():
            raise ValueError("weights path is empty")
        return self

    @property
    def spec(self) -> ModelSpec:
        try:
            return get_spec(self.name, self.revision, self.weights)
        except ModelNotFound as exc:
            raise ValueError(str(exc)) from None

    @property
    def resolved_task(self) -> str:
        return self.spec.task if self.task == "auto" else self.task

    def make_task(self, labels: tuple[str, ...] | None = None) -> Task:
        """The task object both paths ask (labels from the spec unless given)."""
        return TASKS[self.resolved_task](labels if labels is not None else self.spec.labels(), self.score_threshold)


def check_gpu_request(model: ModelConfig, num_gpus: float) -> None:
    """A model's device must match the GPUs its Ray process reserves (both paths call this).

    Ray 2.60 does not hide GPUs from processes that reserved none (ray#54868): a 'cuda' model
    without a reservation would run on a GPU that Ray may hand to someone else. ``auto`` follows
    the reservation (``shared.devices``)."""
    if num_gpus > 0 and model.device == "cpu":
        raise ValueError("GPUs are requested but model.device is 'cpu'")
    if num_gpus == 0 and model.device == "cuda":
        raise ValueError(
            "model.device 'cuda' needs a GPU request: Ray does not stop a process that reserved no GPU from "
            "using one, so it would share a GPU that Ray may give to another process"
        )
