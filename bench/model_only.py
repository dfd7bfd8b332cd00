"""The device half alone (``ModelWrapper.predict_batch`` on prepared uint8 batches): img/s by
precision, memory format and batch size, plus top-1 agreement with fp32 NCHW (on CUDA also the
peak of ``torch.cuda.max_memory_allocated`` per row).

    python -m bench.model_only                       # embedded model, CPU
    python -m bench.model_only --precisions fp32 --batch-sizes 1,2,4,8 --compile   # + compiled rows
    python -m bench.model_only --model resnet152 --weights random --precisions fp32,fp16 --batch-sizes 64,256
    python -m bench.model_only --precisions fp16 --channels-last on --cudnn-benchmark off   # CUDA, autotune off

The last line printed is the JSON of every row.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Sequence

import torch

from shared import ModelConfig, ModelWrapper
from twinfer.samples import sample_jpegs

GIB = 2**30


def rate(wrapper: ModelWrapper, items, batch_size: int, seconds: float) -> float:
    batch = (items * (batch_size // len(items) + 1))[:batch_size]
    wrapper.predict_batch(batch)  # warm
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        wrapper.predict_batch(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def measure(
    model: str,
    weights: str,
    precisions: Sequence[str],
    batch_sizes: Sequence[int],
    seconds: float,
    *,
    compile: bool = False,
    channels_last: Sequence[bool] = (False, True),
    cudnn_benchmark: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per (precision, channels_last) variant, plus compiled channels_last rows with
    ``compile``: img/s at each batch size, top-1 agreement with the first row on the sample photos."""
    images = list(sample_jpegs().values())
    cuda = torch.cuda.is_available()
    sizes = list(batch_sizes)
    variants = [(p, cl, False) for p in precisions for cl in channels_last]
    variants += [(p, True, True) for p in precisions] if compile else []
    rows, reference = [], None
    for precision, memory_format, compiled in variants:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        config = ModelConfig(
            name=model,
            weights=weights,
            precision=precision,
            channels_last=memory_format,
            compile=compiled,
            cudnn_benchmark=cudnn_benchmark,
        )
        # eager CUDA batches are padded to warmed sizes too, so every measured size is warmed
        wrapper = ModelWrapper(config, batch_sizes=sizes if compiled or cuda else (1,))
        items = [wrapper.load(data) for data in images]
        top1 = [r[0]["index"] for r in wrapper.predict_batch(items)]
        reference = reference or top1
        row = {
            "precision": precision,
            "channels_last": wrapper.channels_last,
            "compile": compiled,
            "device": str(wrapper.device),
            "top1_agree": f"{sum(a == b for a, b in zip(top1, reference))}/{len(top1)}",
        }
        row |= {f"b{bs}": round(rate(wrapper, items, bs, seconds), 1) for bs in sizes}
        if cuda:
            row["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        rows.append(row)
        log("  ".join(f"{k}={v}" for k, v in row.items()))
        del wrapper, items
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--compile", action="store_true", help="also rows with compile (channels_last), each size warmed first"
    )
    parser.add_argument(
        "--channels-last", choices=["both", "on", "off"], default="both", help="eager rows' memory formats"
    )
    parser.add_argument(
        "--cudnn-benchmark", choices=["on", "off"], default="on", help="CUDA: cuDNN autotune (a process-wide switch)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    formats = {"both": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
    rows = measure(
        args.model,
        args.weights,
        args.precisions.split(","),
        [int(bs) for bs in args.batch_sizes.split(",")],
        args.seconds,
        compile=args.compile,
        channels_last=formats,
        cudnn_benchmark=args.cudnn_benchmark == "on",
        log=lambda line: print(line, flush=True),
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "cudnn_benchmark": args.cudnn_benchmark == "on",
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
