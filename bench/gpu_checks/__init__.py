"""The sections of ``python -m bench.gpu``, in run order: what each measures, its expected minutes
on one H100 with 16 cores, and which ten-minute piece it belongs to.

Piece 1 is the quick matrix (the figures bench/RESULTS.md lists as not measured); pieces 1-3
together are the review's first-run checklist. The minutes are estimates from reading the code,
not measurements: each run records every section's real minutes in its JSON, which should
replace them here after the first GPU run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Section:
    name: str
    target: str  # "module:function" under bench.gpu_checks, imported only when the section runs
    minutes: float  # expected on one H100, 16 cores
    piece: int  # 1 = the quick matrix; 2 and 3 complete the checklist
    needs_cuda: bool
    about: str
    data: bool = True  # reads the generated dataset (made once, before the first such section)
    isolate: bool = False  # on CUDA, run in a child process: a crash there (threads, the race) costs this section only

    @property
    def quick(self) -> bool:
        return self.piece == 1

    def function(self) -> Callable:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f"bench.gpu_checks.{module}"), name)


SECTIONS: tuple[Section, ...] = (
    # piece 1: the quick matrix; compile last, as its minutes are the least certain
    Section(
        "env",
        "environment:run",
        0.2,
        1,
        False,
        "driver >= R580, CUDA, cuDNN, nvJPEG op and a test decode, /dev/shm",
        data=False,
    ),
    Section(
        "agreement",
        "model:agreement",
        0.6,
        1,
        False,
        "top-1 of fp16 (bf16, fp32 on CUDA) vs fp32 on the CPU, 1000 bench crops, embedded model; >= 99 %",
    ),
    Section(
        "backfill",
        "backfill:quick",
        3.0,
        1,
        True,
        (
            "run_backfill, 40k images, resnet152 and vit_b16 (random weights), "
            "CPU decode vs decode.on_device, 1 actor x 1 GPU"
        ),
    ),
    Section(
        "serve",
        "serve:quick",
        1.5,
        1,
        True,
        "efficientnet fp16 on cuda behind HAProxy, 6 ingress replicas, 1/16/128 clients, /v1/models",
    ),
    Section(
        "compile",
        "compile:compile_section",
        2.0,
        1,
        True,
        "compile seconds per size, compiled vs eager img/s, memory: efficientnet and resnet152 at 1, 64",
        data=False,
    ),
    # piece 2
    Section(
        "model",
        "model:model_alone",
        2.0,
        2,
        False,
        "model alone: efficientnet fp32/fp16/bf16 x channels_last, resnet152 and vit_b16 fp16/bf16, batch 1/64/256",
        data=False,
    ),
    Section(
        "cudnn",
        "model:cudnn",
        1.5,
        2,
        True,
        "cudnn.benchmark on vs off, separate processes: efficientnet and resnet152 fp16",
        data=False,
    ),
    Section(
        "recompile",
        "compile:recompile_section",
        0.5,
        2,
        True,
        "bucket_sizes(256) = 9 sizes: graphs compiled, TORCH_LOGS=recompiles free of recompile_limit",
        data=False,
    ),
    Section(
        "threads",
        "threads:run",
        1.5,
        2,
        False,
        "4 threads on one compiled wrapper: bitwise equal to one thread; img/s with 1 vs 2 threads",
        isolate=True,
    ),
    Section(
        "nvjpeg",
        "nvjpeg:run",
        1.5,
        2,
        True,
        "nvJPEG by JPEG kind (baseline/progressive/grayscale): ms per batch, CPU time, routing, top-1 vs CPU decode",
        isolate=True,
    ),
    # piece 3
    Section(
        "race",
        "race:run",
        1.0,
        3,
        True,
        (
            "pytorch/vision#9606 stress: queued work freed under a decode, "
            "with the drain and with it stubbed (positive control)"
        ),
        isolate=True,
    ),
    Section(
        "fuzz",
        "fuzz:run",
        0.5,
        3,
        True,
        "200 bit-flipped JPEGs through nvJPEG: errors vs silent successes; CUDA still healthy",
    ),
    Section(
        "backfill_more",
        "backfill:more",
        2.5,
        3,
        True,
        "run_backfill, 40k images, 2 actors x 0.5 GPU: resnet152 both decodes, vit_b16",
    ),
    Section(
        "serve_more",
        "serve:more",
        2.0,
        3,
        True,
        "serve: 1 ingress replica (vs 6 in 'serve'), and 6 with decode.on_device",
    ),
)

QUICK_BUDGET_MINUTES = 8.0  # the quick matrix, one command
FULL_BUDGET_MINUTES = 25.0  # the whole checklist
PIECE_BUDGET_MINUTES = 9.5  # one command on a machine that stops commands at 10 minutes
DATASET_MINUTES = 0.3  # generating the 40k-image dataset on 16 cores (once per machine)


def by_name() -> dict[str, Section]:
    return {section.name: section for section in SECTIONS}


def piece(number: int) -> list[Section]:
    return [section for section in SECTIONS if section.piece == number]
