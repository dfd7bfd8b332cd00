"""Sections ``compile`` and ``recompile`` (checklist step 4). Each model compiles in a fresh
process (dynamo's caches, graph counts and inductor's settings are per process); run as

    python -m bench.gpu_checks.compile --model resnet152 --weights random --sizes 1,64
    TORCH_LOGS=recompiles python -m bench.gpu_checks.compile --recompile-check --backend eager

the child prints one JSON line. The recompile check builds one compiled wrapper warmed at
``bucket_sizes(256)`` (9 sizes, past dynamo's default limit of 8 graphs per frame) and then runs
a batch at every size: every size must have its own graph, nothing may recompile, and the
TORCH_LOGS output must never mention the recompile limit. It defaults to dynamo's "eager"
backend: the limits are dynamo's, the same for any backend, and inductor would spend minutes on
9 sizes (``--recompile-backend inductor`` on ``bench.gpu`` checks with inductor anyway).
"""

from __future__ import annotations

import argparse
import json
import re
import time

from bench.gpu_checks.common import child_failure, run_child

COMPILE_MODELS = (("efficientnet_lite0", "default"), ("resnet152", "random"))
COMPILE_SIZES = (1, 64)
RECOMPILE_MAX_BATCH = 256
LIMIT_LOG = re.compile(r"recompile_limit|cache_size_limit", re.IGNORECASE)


def compile_section(ctx, report) -> None:
    sizes = ",".join(map(str, COMPILE_SIZES))
    for name, weights in COMPILE_MODELS:
        child = run_child(
            "bench.gpu_checks.compile",
            ["--model", name, "--weights", weights, "--sizes", sizes, "--seconds", "1"],
            timeout=ctx.child_timeout(420),
        )
        result = child["result"]
        if result is None:
            report.add(f"{name} compile", child_failure(child), passed=False)
            report.details[name] = {k: child[k] for k in ("rc", "seconds", "stderr_tail", "command")}
            continue
        report.details[name] = result
        report.add(
            f"{name} compile seconds per size",
            ", ".join(f"b{bs} {result['compile_s'][str(bs)]:.1f} s" for bs in COMPILE_SIZES),
        )
        report.add(
            f"{name} fp16 img/s, compiled vs eager",
            ", ".join(
                (
                    f"b{bs} {result['compiled'][str(bs)]:g} vs {result['eager'][str(bs)]:g} "
                    f"(x{result['compiled'][str(bs)] / result['eager'][str(bs)]:.2f})"
                )
                for bs in COMPILE_SIZES
            ),
        )
        report.add(
            f"{name} device memory after warm-up (compiled)",
            f"{result['memory']['allocated_gib']} GiB, peak {result['memory']['peak_allocated_gib']} GiB",
        )


def recompile_section(ctx, report) -> None:
    backend = ctx.options.get("recompile_backend", "eager")
    child = run_child(
        "bench.gpu_checks.compile",
        ["--recompile-check", "--backend", backend, "--max-batch-size", str(RECOMPILE_MAX_BATCH)],
        timeout=ctx.child_timeout(540),
        env={"TORCH_LOGS": "recompiles"},
    )
    limit_lines = [line.strip() for line in child["stderr"].splitlines() if LIMIT_LOG.search(line)]
    report.details.update(
        backend=backend, limit_lines=limit_lines[:10], rc=child["rc"], stderr_tail=child["stderr_tail"]
    )
    report.add(
        f"'recompile_limit' lines in TORCH_LOGS=recompiles ({backend})",
        len(limit_lines),
        passed=not limit_lines,
        threshold="0",
    )
    result = child["result"]
    if result is None:
        report.add("recompile check", child_failure(child), passed=False)
        return
    report.details.update(result)
    sizes = result["sizes"]
    graphs = result["graphs_after_warmup"]
    report.add(  # a graph break would give a size more than one graph; a size past the limit gets none
        f"graphs compiled warming bucket_sizes({RECOMPILE_MAX_BATCH}) = {len(sizes)} sizes",
        graphs if graphs is not None else "not counted",
        passed=graphs >= len(sizes) if graphs is not None else None,
        threshold=f">= {len(sizes)}",
    )
    report.add(
        "batches after warm-up that recompiled or failed",
        f"{len(result['failed'])} of {len(sizes)}" + (f": {result['failed']}" if result["failed"] else ""),
        passed=not result["failed"] and result["graphs_after_run"] == graphs,
        threshold="0, and no new graph",
    )


# ---- the child --------------------------------------------------------------------------------
def probe(model: str, weights: str, sizes: list[int], seconds: float) -> dict:
    """Eager img/s, then compile seconds per size, compiled img/s and memory, on CUDA at precision auto."""
    import torch

    from bench.gpu_checks.common import cuda_memory_gib, release_cuda
    from bench.model_only import rate
    from shared import ModelConfig, ModelWrapper
    from twinfer.samples import sample_jpegs

    images = list(sample_jpegs().values())
    config = {"name": model, "weights": weights, "device": "cuda"}
    eager = ModelWrapper(ModelConfig(**config), batch_sizes=sizes)
    items = [eager.load(data) for data in images]
    eager_rates = {str(bs): round(rate(eager, items, bs, seconds), 1) for bs in sizes}
    del eager
    release_cuda()
    torch.cuda.reset_peak_memory_stats()
    compiled = ModelWrapper(ModelConfig(**config, compile=True), batch_sizes=())
    compile_s = {}
    for bs in sizes:
        started = time.perf_counter()
        compiled.warmup((bs,))
        compile_s[str(bs)] = round(time.perf_counter() - started, 2)
    memory = cuda_memory_gib()
    compiled_rates = {str(bs): round(rate(compiled, items, bs, seconds), 1) for bs in sizes}
    return {
        "model": model,
        "precision": str(compiled.dtype),
        "eager": eager_rates,
        "compile_s": compile_s,
        "compiled": compiled_rates,
        "memory": memory,
    }


def recompile_check(backend: str, max_batch_size: int) -> dict:
    import torch
    from torch._dynamo.utils import counters

    from shared import ModelConfig, ModelWrapper, torch_process
    from shared.runner import bucket_sizes
    from twinfer.samples import sample_jpegs

    torch_process.COMPILE_BACKEND = backend
    sizes = list(bucket_sizes(max_batch_size))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wrapper = ModelWrapper(ModelConfig(compile=True, device=device), batch_sizes=sizes)
    graphs = lambda: counters["stats"].get("unique_graphs") if "stats" in counters else None  # noqa: E731
    after_warmup = graphs()
    items = [wrapper.load(data) for data in sample_jpegs().values()]
    failed = {}
    for bs in sizes:
        try:
            wrapper.predict_batch((items * (bs // len(items) + 1))[:bs])
        except Exception as exc:  # noqa: BLE001 - a recompile under fail_on_recompile raises; record which size
            failed[str(bs)] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    import torch._dynamo.config as dynamo_config

    limit = getattr(dynamo_config, "recompile_limit", getattr(dynamo_config, "cache_size_limit", None))
    return {
        "backend": backend,
        "sizes": sizes,
        "graphs_after_warmup": after_warmup,
        "graphs_after_run": graphs(),
        "failed": failed,
        "recompile_limit": limit,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--sizes", default="1,64")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--recompile-check", action="store_true")
    parser.add_argument("--backend", default="eager", help="recompile check: the torch.compile backend")
    parser.add_argument("--max-batch-size", type=int, default=RECOMPILE_MAX_BATCH)
    args = parser.parse_args(argv)
    if args.recompile_check:
        result = recompile_check(args.backend, args.max_batch_size)
    else:
        result = probe(args.model, args.weights, [int(s) for s in args.sizes.split(",")], args.seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
