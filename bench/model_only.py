"""The device half alone (``ModelWrapper.predict_batch`` on prepared uint8 batches): img/s by
precision, memory format and batch size, plus top-1 agreement with fp32 NCHW.

    python -m bench.model_only                       # embedded model, CPU
    python -m bench.model_only --precisions fp32 --batch-sizes 1,2,4,8 --compile   # + compiled rows
    python -m bench.model_only --model resnet152 --weights random --precisions fp32,fp16 --batch-sizes 64,256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from shared import ModelConfig, ModelWrapper
from twinfer.samples import sample_jpegs


def rate(wrapper: ModelWrapper, items, batch_size: int, seconds: float) -> float:
    batch = (items * (batch_size // len(items) + 1))[:batch_size]
    wrapper.predict_batch(batch)  # warm
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        wrapper.predict_batch(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--compile", action="store_true", help="also rows with compile (channels_last), each size warmed first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = list(sample_jpegs().values())
    rows = []
    reference = None
    sizes = [int(bs) for bs in args.batch_sizes.split(",")]
    variants = [(p, cl, False) for p in args.precisions.split(",") for cl in (False, True)]
    variants += [(p, True, True) for p in args.precisions.split(",")] if args.compile else []
    for precision, channels_last, compiled in variants:
        config = ModelConfig(name=args.model, weights=args.weights, precision=precision, channels_last=channels_last, compile=compiled)
        wrapper = ModelWrapper(config, batch_sizes=sizes if compiled else (1,))
        items = [wrapper.load(data) for data in images]
        top1 = [r[0]["index"] for r in wrapper.predict_batch(items)]
        reference = reference or top1
        row = {"precision": precision, "channels_last": wrapper.channels_last, "compile": compiled, "device": str(wrapper.device),
               "top1_agree": f"{sum(a == b for a, b in zip(top1, reference))}/{len(top1)}"}
        row |= {f"b{bs}": round(rate(wrapper, items, bs, args.seconds), 1) for bs in sizes}
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(json.dumps({"model": args.model, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
