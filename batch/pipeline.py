"""The backfill: list -> skip what is done -> read -> decode (CPU tasks) -> predict (actors) -> Parquet.

``run_backfill(config)`` is the one entry point (CLI, demo and benchmark call it); it returns a
summary dict and prints one summary line.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset, TaskPoolStrategy

from batch.config import BackfillConfig
from batch.decode_stage import decode_batch
from batch.evaluate import run_evaluate
from batch.listing import list_inputs
from batch.predict_actor import Predictor, output_schema
from batch.resume import done_paths
from batch.sink import IdempotentParquetSink
from batch.uris import Resolved, resolve

logger = logging.getLogger(__name__)

# Ray Data fuses a task-pool map into the following actor-pool map when their remote args are
# equal (operator_fusion.are_op_remote_args_compatible); decoding would then run serially inside
# the model actors. Read and decode tasks carry `max_calls` (an option actors cannot have), so
# read+decode fuse with each other but never with the predictor. It also recycles decode workers
# now and then, which bounds any slow leak in the image libraries.
DECODE_MAX_CALLS = 10_000


def build_dataset(config: BackfillConfig, source: Resolved, paths: list[str]) -> Dataset:
    """The lazy Dataset for ``paths`` (filesystem paths under ``source``), ending before the write."""
    read_args = {"num_cpus": config.decode_cpus, "max_calls": DECODE_MAX_CALLS}
    ds = ray.data.read_binary_files(
        paths,
        filesystem=source.filesystem,
        include_paths=True,
        override_num_blocks=config.read_blocks,
        concurrency=config.decode_parallelism,  # the same cap as decode, or the two would not fuse
        **read_args,
    )
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"model": config.model, "input_location": source.location},
        batch_size=None,  # one read block at a time: a batch size would stop read+decode fusing
        batch_format="pyarrow",
        compute=TaskPoolStrategy(size=config.decode_parallelism),
        **read_args,
    )
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model": config.model, "top_k": config.top_k, "batch_size": config.batch_size},
        batch_size=config.actor_call_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=config.actor_pool_size),
        num_cpus=config.num_cpus_per_actor,
        num_gpus=config.num_gpus_per_actor,
        resources=config.resources_per_actor or None,
    )


def run_backfill(config: BackfillConfig) -> dict:
    """Run (or resume) a backfill; returns the summary (rows, errors, img_per_s, output, ...).

    ``rows`` / ``errors`` / ``files`` count what this call wrote; ``skipped`` the inputs an earlier
    run already wrote; ``img_per_s`` is rows over the whole call (listing and start-up included).
    """
    started = time.perf_counter()
    source = resolve(config.input, config.s3)
    target = resolve(config.output, config.s3)
    inputs = list_inputs(source.filesystem, source.path, config.extensions)
    done = done_paths(target.filesystem, target.path)
    pending = [p for p in inputs if source.uri_for(p) not in done]
    logger.info("%d input files, %d already in %s, %d to do", len(inputs), len(inputs) - len(pending), config.output, len(pending))

    sink = IdempotentParquetSink(target.filesystem, target.path, output_schema(config.model.task), config.min_rows_per_file)
    stats = ""
    if pending:
        _ensure_ray(config.address)
        if not config.address:
            check_cpus_leave_room_for_decode(config, ray.cluster_resources().get("CPU", 0.0))
        with _progress_bars(config.progress):
            ds = build_dataset(config, source, pending)
            ds.write_datasink(sink)
            stats = ds.stats()
    seconds = time.perf_counter() - started
    rows = sum(w["rows"] for w in sink.written)
    summary = {
        "output": config.output,
        "model": config.model.name,
        "inputs": len(inputs),
        "skipped": len(inputs) - len(pending),
        "rows": rows,
        "errors": sum(w["errors"] for w in sink.written),
        "files": sorted(w["file"] for w in sink.written),
        "seconds": round(seconds, 3),
        "img_per_s": round(rows / seconds, 2) if seconds > 0 else 0.0,
        "stats": stats,
    }
    print(summary_line(summary), flush=True)
    if config.evaluate:
        summary["evaluation"] = run_evaluate(config.output, config.evaluation_output, config.s3)
    return summary


class DecodeWouldStarve(ValueError):
    """The model actors' CPU reservations leave none for a decode task."""


def check_cpus_leave_room_for_decode(config: BackfillConfig, cluster_cpus: float) -> None:
    """Model actors hold their CPUs for the whole job: if they hold them all, no decode task is
    ever scheduled and the job waits forever. Refuse that at start-up instead. (Not checked
    with ``address``: a remote cluster may autoscale.)"""
    actors = config.actor_pool_size * config.num_cpus_per_actor
    if actors + config.decode_cpus > cluster_cpus:
        raise DecodeWouldStarve(
            f"{config.actor_pool_size} model actor(s) x {config.num_cpus_per_actor} CPU + {config.decode_cpus} CPU "
            f"for a decode task > the {cluster_cpus:g} CPUs Ray has: decoding could never run. "
            "Lower --cpus-per-actor (fractions are fine) or --actors, or --decode-cpus"
        )


def summary_line(summary: dict) -> str:
    return (
        f"backfill: {summary['rows']} rows written ({summary['errors']} errors, "
        f"{summary['skipped']} of {summary['inputs']} inputs already done) in {summary['seconds']:.1f} s, "
        f"{summary['img_per_s']:.1f} img/s -> {summary['output']}"
    )


def _ensure_ray(address: str | None) -> None:
    """Use the current Ray session, or join ``address`` / start a local one (left running, as Ray Data does)."""
    if not ray.is_initialized():
        ray.init(address=address)
    elif address:
        logger.warning("Ray is already initialised in this process; ignoring address %s", address)


@contextmanager
def _progress_bars(enabled: bool):
    context = DataContext.get_current()
    previous = context.enable_progress_bars
    context.enable_progress_bars = enabled
    try:
        yield
    finally:
        context.enable_progress_bars = previous
