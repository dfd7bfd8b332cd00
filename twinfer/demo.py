"""``twinfer demo``: the sample photos through the wrapper directly, then online and offline.

All three paths must give the same top-5 (labels equal, scores within 1e-5); the demo says so
and exits non-zero if they do not.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shared import ModelConfig, ModelWrapper
from twinfer import console
from twinfer.ports import free_loopback_port
from twinfer.samples import sample_jpegs

TOLERANCE = 1e-5


def format_top(predictions: list[dict], k: int = 5) -> str:
    return ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions[:k])


def print_table(title: str, rows: dict[str, list[dict]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name in rows)
    for name, predictions in rows.items():
        print(f"  {name:<{width}}  {format_top(predictions)}")


def same_answers(a: list[dict], b: list[dict]) -> bool:
    return [p["label"] for p in a] == [p["label"] for p in b] and bool(
        np.allclose([p["score"] for p in a], [p["score"] for p in b], atol=TOLERANCE, rtol=0)
    )


def compare(path: str, direct: dict[str, list[dict]], other: dict[str, list[dict]]) -> bool:
    agree = all(same_answers(direct[name], other[name]) for name in direct)
    print(
        f"  -> {path} answers {'EQUAL' if agree else 'DIFFER FROM'} "
        f"the direct wrapper's (labels, scores within {TOLERANCE})"
    )
    return agree


def online(config: ModelConfig, images: dict[str, bytes]) -> dict[str, list[dict]]:
    import httpx
    import ray
    from ray import serve

    from deployments.app import build
    from deployments.config import AppArgs

    port = free_loopback_port()
    options = {"log_to_driver": False} | console.ray_init_options()
    ray.init(ignore_reinit_error=True, include_dashboard=False, **options)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(AppArgs(models=[{"model": config.model_dump()}])), name="twinfer-demo", route_prefix="/")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            return {
                name: client.post(
                    f"/v1/models/{config.name}/classify",
                    params={"top_k": 5},
                    content=data,
                    headers={"content-type": "image/jpeg"},
                )
                .raise_for_status()
                .json()["predictions"]
                for name, data in images.items()
            }
    finally:
        serve.delete("twinfer-demo")
        serve.shutdown()


def offline(config: ModelConfig, images: dict[str, bytes]) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    from batch.config import BackfillConfig
    from batch.pipeline import run_backfill

    with tempfile.TemporaryDirectory() as tmp:
        source, output = Path(tmp) / "images", Path(tmp) / "predictions"
        source.mkdir()
        for name, data in images.items():
            (source / f"{name}.jpg").write_bytes(data)
        run_backfill(BackfillConfig(model=config, input=str(source), output=str(output), top_k=5))
        table = pq.read_table(output).to_pylist()
    rows = {Path(row["path"]).stem: row for row in table}
    task = config.make_task()
    return {name: task.answer_from_row(rows[name]) for name in images}


def run_demo(args) -> int:
    # five photos: compiling (compile: auto on a CPU server) would take longer than it saves
    config = ModelConfig(name=args.model, weights=args.weights, compile=False)
    images = sample_jpegs()
    wrapper = ModelWrapper(config)
    direct = {name: wrapper.classify_bytes(data, top_k=5) for name, data in images.items()}
    print_table(f"direct wrapper ({config.name}, {wrapper.device}, top-5)", direct)
    agree = True
    if not args.skip_online:
        answers = online(config, images)
        print_table("online: Ray Serve over HTTP", answers)
        agree &= compare("online", direct, answers)
    if not args.skip_offline:
        answers = offline(config, images)
        print_table("offline: Ray Data backfill -> Parquet", answers)
        agree &= compare("offline", direct, answers)
    return 0 if agree else 1
