"""``twinfer demo``: the sample photos through the wrapper directly, then online and offline."""

from __future__ import annotations

from shared import ModelConfig, ModelWrapper
from twinfer.samples import sample_jpegs


def format_top(predictions: list[dict], k: int = 5) -> str:
    return ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions[:k])


def print_table(title: str, rows: dict[str, list[dict]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name in rows)
    for name, predictions in rows.items():
        print(f"  {name:<{width}}  {format_top(predictions)}")


def run_demo(args) -> int:
    config = ModelConfig(name=args.model, weights=args.weights)
    images = sample_jpegs()
    wrapper = ModelWrapper(config)
    direct = {name: wrapper.classify_bytes(data, top_k=5) for name, data in images.items()}
    print_table(f"direct ({config.name}, {wrapper.device}, top-5)", direct)
    return 0
