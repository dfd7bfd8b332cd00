"""Sections ``agreement``, ``model`` and ``cudnn`` (checklist steps 2 and 3): the device half alone."""

from __future__ import annotations

from bench.gpu_checks.common import agreement as agree
from bench.gpu_checks.common import child_failure, load_all, release_cuda, run_child, top1

AGREEMENT_MIN = 0.99  # the accuracy guard bf16 failed on CPU (bench/RESULTS.md)

# (model, weights, precisions, channels_last variants, batch sizes)
MODEL_PLANS = (
    ("efficientnet_lite0", "default", ("fp32", "fp16", "bf16"), (False, True), (1, 64, 256)),
    ("resnet152", "random", ("fp16", "bf16"), (True,), (64, 256)),
    ("vit_b16", "random", ("fp16", "bf16"), (True,), (64, 256)),
)
TINY_MODEL_PLANS = (("efficientnet_lite0", "default", ("fp32",), (True,), (1, 2)),)
CUDNN_MODELS = (("efficientnet_lite0", "default"), ("resnet152", "random"))


def agreement(ctx, report) -> None:
    """Top-1 of each precision on the device against fp32 on the CPU (the reference the batch
    bench uses), on the bench crops: the embedded model, the one with real weights here."""
    from shared import ImageLoader, ModelConfig, ModelWrapper

    paths = ctx.images(ctx.pick(1000, 4))
    items = load_all(ImageLoader(ModelConfig()), paths)
    batch = ctx.pick(64, 4)
    reference = top1(ModelWrapper(ModelConfig(device="cpu", precision="fp32")), items, batch)
    release_cuda()
    # on a CPU (harness test) only fp32 against itself: bf16 can take minutes on CPUs without AVX-512 BF16
    candidates = ("fp16", "bf16", "fp32") if ctx.cuda else ("fp32",)
    report.details["images"] = len(items)
    for precision in candidates:
        wrapper = ModelWrapper(ModelConfig(device=ctx.device, precision=precision), batch_sizes=(batch,))
        same, total, fraction = agree(top1(wrapper, items, batch), reference)
        guarded = precision == "fp16"  # what precision auto gives on CUDA
        report.add(
            f"{precision} on {ctx.device} vs fp32 on cpu, top-1",
            f"{same}/{total} ({fraction:.2%})",
            passed=fraction >= AGREEMENT_MIN if guarded else None,
            threshold=f">= {AGREEMENT_MIN:.0%}" if guarded else None,
        )
        del wrapper
        release_cuda()


def model_alone(ctx, report) -> None:
    """img/s of ``predict_batch`` on prepared batches by precision x channels_last x batch size,
    with the peak device memory of each variant (``bench.model_only.measure``)."""
    from bench.model_only import measure

    for name, weights, precisions, formats, sizes in ctx.pick(MODEL_PLANS, TINY_MODEL_PLANS):
        rows = measure(
            name, weights, precisions, sizes, ctx.pick(1.0, 0.05), channels_last=formats, log=lambda line: None
        )
        report.details[name] = rows
        for row in rows:
            rates = ", ".join(f"b{bs} {row[f'b{bs}']:g}" for bs in sizes)
            memory = f"; peak {row['max_mem_gib']} GiB" if "max_mem_gib" in row else ""
            layout = "channels_last" if row["channels_last"] else "NCHW"
            report.add(
                f"{name} {row['precision']} {layout} img/s", f"{rates}{memory}; top-1 vs first row {row['top1_agree']}"
            )
        release_cuda()


def cudnn(ctx, report) -> None:
    """cudnn.benchmark on vs off, each in its own process (the switch is process-wide)."""
    sizes = "1,64,256"
    for name, weights in CUDNN_MODELS:
        rates = {}
        for setting in ("on", "off"):
            child = run_child(
                "bench.model_only",
                [
                    "--model",
                    name,
                    "--weights",
                    weights,
                    "--precisions",
                    "fp16",
                    "--channels-last",
                    "on",
                    "--batch-sizes",
                    sizes,
                    "--seconds",
                    "1",
                    "--cudnn-benchmark",
                    setting,
                ],
                timeout=ctx.child_timeout(240),
            )
            if child["result"] is None:
                report.add(f"{name} fp16 cudnn.benchmark {setting}", child_failure(child), passed=False)
                continue
            rates[setting] = child["result"]["rows"][0]
            report.details[f"{name}_{setting}"] = rates[setting]
        if len(rates) == 2:
            on, off = rates["on"], rates["off"]
            value = ", ".join(
                f"b{bs} {on[f'b{bs}']:g} vs {off[f'b{bs}']:g} (x{on[f'b{bs}'] / off[f'b{bs}']:.2f})"
                for bs in sizes.split(",")
            )
            report.add(f"{name} fp16 img/s, benchmark on vs off", value)
