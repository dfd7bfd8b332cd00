"""The naive ways of doing the same jobs, as the issue's reference points describe them.

- seed-style batch: ``read_images`` -> row-wise ``map`` (PIL Resize/CenterCrop + ToTensor +
  Normalize, float32 rows) -> fp32 ``map_batches`` actor -> Parquet.
- docs-style online: one deployment, ``@serve.batch(64, 5 ms)``, PIL decode and transforms inside
  the batch method, Serve defaults otherwise.
Both run the same registry model so the comparison is about the plumbing.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from shared import ModelConfig, get_spec


def _transform(model_name: str):
    from torchvision import transforms

    pre = get_spec(model_name).preprocess
    resize = [transforms.Resize(pre.resize), transforms.CenterCrop(pre.size)] if pre.resize else [transforms.Resize((pre.size, pre.size))]
    return transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])


def _model(config: ModelConfig, device: str) -> torch.nn.Module:
    if config.cpu_threads and device == "cpu":  # same thread budget as twinfer gets
        torch.set_num_threads(config.cpu_threads)
    return get_spec(config.name).build(config.weights, config.options).eval().to(device)


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


def seed_style_batch(input_dir: str, output_dir: str, config: ModelConfig, actors: int, batch_size: int, num_gpus: float) -> int:
    import ray

    transform = _transform(config.name)

    def preprocess(row: dict) -> dict:
        return {"image": transform(Image.fromarray(row["image"])).numpy(), "path": row["path"]}

    ds = ray.data.read_images(input_dir, mode="RGB", include_paths=True).map(preprocess)
    ds = ds.map_batches(
        SeedPredictor, fn_constructor_kwargs={"config": config.model_dump()}, batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=num_gpus,
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
            self.transform = _transform(self.config.name)
            self.labels = get_spec(self.config.name).labels()

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
