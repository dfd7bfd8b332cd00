"""The ways the seeds and the docs do the same jobs: the reference points twinfer is measured against.

- **seed-faithful batch** (``seed_faithful_batch``): the pipeline exactly as the seed notebooks
  write it. ``read_images(mode="RGB")``, then a row-wise ``map`` applying
  ``Compose([ToTensor(), weights.transforms()])`` to each full-size image (a float32 tensor of the
  whole photo, then the weights' antialiased resize, crop and normalise), then a class-based
  ``map_batches`` predictor, then ``write_parquet``.
- **PIL-first batch** (``pil_first_batch``): the same, but resizing with PIL before ``ToTensor``.
  That is cheaper than what the seeds do, so it is a kinder baseline; kept to show how much of
  the gap is preprocessing alone.
- **docs-style online** (``docs_style_app``): one deployment, ``@serve.batch(64, 5 ms)``, PIL
  decode and transforms inside the batch method, Serve defaults otherwise.

All of them run the same registry model and weights as twinfer, so the comparison is about the plumbing.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from shared import ModelConfig


def weights_transform(config: ModelConfig):
    """What ``weights.transforms()`` is for this model: torchvision's own ``ImageClassification``
    preset (antialiased resize of a float tensor, centre crop, normalise) with the model's sizes."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    pre = config.spec.preprocess
    if pre.mode != "resize_crop":
        raise ValueError(f"the seed pipelines resize then crop; {config.name} preprocesses with {pre.mode}")
    return ImageClassification(
        crop_size=pre.size,
        resize_size=pre.resize or pre.size,
        mean=pre.mean,
        std=pre.std,
        interpolation=InterpolationMode(pre.interpolation),
    )


def seed_transform(config: ModelConfig):
    """``Compose([ToTensor(), weights.transforms()])``, as the seed notebooks write it."""
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), weights_transform(config)])


def pil_first_transform(config: ModelConfig):
    """Resize and crop with PIL on uint8, then ``ToTensor`` and normalise: cheaper than the seeds'."""
    from torchvision import transforms

    pre = config.spec.preprocess
    interpolation = transforms.InterpolationMode(pre.interpolation)
    return transforms.Compose(
        [
            transforms.Resize(pre.resize or pre.size, interpolation=interpolation),
            transforms.CenterCrop(pre.size),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )


def _model(config: ModelConfig, device: str) -> torch.nn.Module:
    if isinstance(config.cpu_threads, int) and device == "cpu":  # an explicit thread budget applies to both
        torch.set_num_threads(config.cpu_threads)
    return config.spec.build(config.weights, config.options).eval().to(device)


class SeedPredictor:
    def __init__(self, config: dict):
        self.config = ModelConfig.model_validate(config)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = _model(self.config, self.device)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(np.stack(batch["image"])).to(self.device)
        probs = self.model(x).softmax(-1)
        scores, indices = probs.topk(5, dim=1)
        return {"path": batch["path"], "top_indices": indices.cpu().numpy(), "top_scores": scores.cpu().numpy()}


def seed_faithful_batch(
    input_dir: str, output_dir: str, config: ModelConfig, actors: int, batch_size: int, num_gpus: float
) -> int:
    """The seed notebooks' pipeline; returns the rows written."""
    return _row_map_batch(seed_transform(config), input_dir, output_dir, config, actors, batch_size, num_gpus)


def pil_first_batch(
    input_dir: str, output_dir: str, config: ModelConfig, actors: int, batch_size: int, num_gpus: float
) -> int:
    """The seed pipeline with PIL resizing first (a kinder baseline); returns the rows written."""
    from PIL import Image

    transform = pil_first_transform(config)
    return _row_map_batch(
        lambda array: transform(Image.fromarray(array)), input_dir, output_dir, config, actors, batch_size, num_gpus
    )


BASELINES = {"seed-faithful": seed_faithful_batch, "pil-first": pil_first_batch}


def _row_map_batch(
    transform, input_dir: str, output_dir: str, config: ModelConfig, actors: int, batch_size: int, num_gpus: float
) -> int:
    import ray

    def preprocess(row: dict) -> dict:
        return {"image": transform(row["image"]).numpy(), "path": row["path"]}

    ds = ray.data.read_images(input_dir, mode="RGB", include_paths=True).map(preprocess)
    ds = ds.map_batches(
        SeedPredictor,
        fn_constructor_kwargs={"config": config.model_dump()},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus,
    )
    ds.write_parquet(output_dir)
    return sum(1 for _ in ray.data.read_parquet(output_dir).iter_rows())


def docs_style_app(config: ModelConfig, num_gpus: float, num_cpus: float):
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus})
    class DocsStyleClassifier:
        def __init__(self, config: dict):
            self.config = ModelConfig.model_validate(config)
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = _model(self.config, self.device)
            self.transform = pil_first_transform(self.config)
            self.labels = self.config.spec.labels()

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
        async def classify(self, requests: list[Request]) -> list[dict]:
            images = [Image.open(io.BytesIO(await r.body())).convert("RGB") for r in requests]
            x = torch.stack([self.transform(image) for image in images]).to(self.device)
            with torch.inference_mode():
                scores, indices = self.model(x).softmax(-1).topk(5, dim=1)
            return [
                {"predictions": [{"label": self.labels[i], "index": i, "score": s} for s, i in zip(sc, ix)]}
                for sc, ix in zip(scores.tolist(), indices.tolist())
            ]

        async def __call__(self, request: Request) -> dict:
            return await self.classify(request)

    return DocsStyleClassifier.bind(config.model_dump())
