"""Sections ``backfill`` and ``backfill_more`` (checklist step 9): ``batch.pipeline.run_backfill``
end to end on the generated dataset (40 000 images by default), through ``bench.run.timed_backfill``.

resnet152 and vit_b16 run with random weights (speed only; no agreement figure), fp16, batch 256.
img/s is end to end (listing, Ray Data planning and the actors' start-up included, as
``bench.run`` reports it) and is what the targets are judged on; Ray Data's own dataset
throughput (first block's start to last block's end) is shown beside it. GPU memory is the whole
device's (nvidia-smi), sampled through the run: at start, peak, and growth; with it the mean GPU
utilization (nvidia-smi) and how busy all 16 cores were (/proc/stat).
"""

from __future__ import annotations

import shutil

# bench/RESULTS.md's GPU batch targets
TARGETS = {"resnet152": 6000, "vit_b16": 5000}
BATCH_SIZE = 256

# (model, decode.on_device, actors, GPUs per actor)
QUICK_RUNS = (
    ("resnet152", False, 1, 1.0),
    ("resnet152", True, 1, 1.0),
    ("vit_b16", False, 1, 1.0),
    ("vit_b16", True, 1, 1.0),
)
MORE_RUNS = (("resnet152", False, 2, 0.5), ("resnet152", True, 2, 0.5), ("vit_b16", False, 2, 0.5))


def quick(ctx, report) -> None:
    for run in QUICK_RUNS:
        one_run(ctx, report, *run)


def more(ctx, report) -> None:
    for run in MORE_RUNS:
        one_run(ctx, report, *run)


def one_run(ctx, report, model: str, on_device: bool, actors: int, gpus: float) -> None:
    from bench.run import timed_backfill
    from shared import ModelConfig

    ctx.images()  # generated before the clock starts
    ctx.ensure_ray()
    label = f"{model}, {'nvJPEG' if on_device else 'CPU'} decode, {actors} x {gpus:g} GPU"
    config = ModelConfig(name=model, weights="random", device="cuda", decode={"on_device": on_device})
    output = ctx.work / f"backfill-{model}-{int(on_device)}-{actors}"
    try:
        row = timed_backfill(
            config,
            ctx.data_dir,
            output,
            batch_size=BATCH_SIZE,
            actor_pool_size=actors,
            num_gpus_per_actor=gpus,
            progress=False,
        )
    finally:
        shutil.rmtree(output, ignore_errors=True)
    report.details[label] = row
    target = TARGETS.get(model)
    report.add(
        f"{label}: img/s end to end",
        f"{row['img_s']:g} ({row['images']} images in {row['seconds']} s; Ray Data {row['ray_data_rows_s']})",
        passed=row["img_s"] >= target if target else None,
        threshold=f">= {target}" if target else None,
    )
    report.add(
        f"{label}: GPU memory start / peak / growth",
        (
            f"{row['gpu_start_gib']} / {row['gpu_mem_peak_gib']} / {row['gpu_growth_gib']} GiB; "
            f"host growth {row['host_growth_gib']} GiB"
        ),
    )
    report.add(
        f"{label}: GPU busy / CPUs busy (means over the run)", f"{row['gpu_util_pct']} % / {row['cpu_busy_pct']} %"
    )
    if row["errors"]:
        report.add(f"{label}: error rows", row["errors"], passed=False, threshold="0 (every bench image is valid)")
