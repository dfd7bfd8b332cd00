"""The backfill: list -> skip what is done -> read -> decode (CPU tasks) -> predict (actors) -> Parquet.

``run_backfill(config)`` is the one entry point (CLI, demo and benchmark call it); it returns a
summary dict and prints one summary line.

Before Ray starts, the output folder is checked (``batch.ownership``: a folder twinfer cannot
prove is its own is refused, untouched) and, with ``evaluate``, so is the report's location.
A file the listing already shows to be over ``model.decode.max_bytes`` is never read: the driver
writes its ``image_too_large`` error row into the output itself, so a resume counts it as done.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset, TaskPoolStrategy

from batch.config import BackfillConfig
from batch.decode_stage import decode_batch
from batch.evaluate import check_report_targets, default_report_uri, run_evaluate
from batch.listing import InputFile, label_for, list_input_files
from batch.ownership import JobIdentity, claim_output
from batch.predict_actor import Predictor, output_schema
from batch.resume import read_output
from batch.sink import IdempotentParquetSink
from batch.uris import Resolved, redact_uri, resolve
from shared.errors import ImageTooLarge
from shared.wrapper import planned_output_dim
from twinfer import console

logger = logging.getLogger(__name__)

# Ray Data fuses a task-pool map into the following actor-pool map when their remote args are
# equal (operator_fusion.are_op_remote_args_compatible); decoding would then run serially inside
# the model actors. Read and decode tasks carry `max_calls` (an option actors cannot have), so
# read+decode fuse with each other but never with the predictor. It also recycles decode workers
# now and then, which bounds any slow leak in the image libraries.
DECODE_MAX_CALLS = 10_000


def build_dataset(config: BackfillConfig, source: Resolved, paths: list[str], dim: int | None = None) -> Dataset:
    """The lazy Dataset for ``paths`` (filesystem paths under ``source``), ending before the write.
    ``dim``: the width of vector answers (embeddings) the output schema was planned with."""
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
        fn_constructor_kwargs={
            "model": config.model,
            "top_k": config.top_k,
            "batch_size": config.resolved_batch_size,
            "dim": dim,
        },
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
    shown = redact_uri(config.output)
    source = resolve(config.input, config.s3)
    target = resolve(config.output, config.s3)
    identity = JobIdentity(config.model.name, config.model.resolved_task)
    if config.evaluate:
        report_uri = config.evaluation_output or default_report_uri(config.output)
        check_report_targets(report_uri, config.s3)
    done, folder = read_output(target.filesystem, target.path, identity, shown)
    inputs = list_input_files(source.filesystem, source.path, config.extensions)
    pending = [f for f in inputs if source.uri_for(f.path) not in done]
    cap = config.model.decode.max_bytes
    too_large = [f for f in pending if f.size is not None and f.size > cap]
    readable = [f.path for f in pending if f.size is None or f.size <= cap]
    logger.info(
        "%d input files, %d already in %s, %d to do (%d over the byte cap)",
        len(inputs),
        len(inputs) - len(pending),
        shown,
        len(pending),
        len(too_large),
    )

    dim = planned_output_dim(config.model)
    schema = output_schema(config.model, dim).with_metadata(identity.parquet_metadata())
    sink = IdempotentParquetSink(target.filesystem, target.path, schema, config.min_rows_per_file)
    written: list[dict] = []
    stats = ""
    if pending:
        claim_output(target.filesystem, target.path, identity, folder)
    if too_large:
        chunk = config.min_rows_per_file or len(too_large)
        for start in range(0, len(too_large), chunk):
            rows = too_large_rows(config, source, too_large[start : start + chunk], schema)
            written.append(sink.write_tables([rows]))
    cluster_cpus = None  # with an address (a remote cluster) the reservation decides
    if readable:
        _ensure_ray(config.address)
        if not config.address:
            cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
            check_cpus_leave_room_for_decode(config, cluster_cpus)
            warn_if_cpus_are_held(config, ray.available_resources().get("CPU", 0.0), cluster_cpus)
    config = config.resolved(len(readable), cluster_cpus)  # what runs: no model build may see an auto value
    if readable:
        with _progress_bars(config.progress):
            ds = build_dataset(config, source, readable, dim)
            ds.write_datasink(sink)
            stats = ds.stats()
        written += sink.written
    seconds = time.perf_counter() - started
    rows = sum(w["rows"] for w in written)
    summary = {
        "output": shown,
        "model": config.model.name,
        "inputs": len(inputs),
        "skipped": len(inputs) - len(pending),
        "rows": rows,
        "errors": sum(w["errors"] for w in written),
        "files": sorted(w["file"] for w in written),
        "seconds": round(seconds, 3),
        "img_per_s": round(rows / seconds, 2) if seconds > 0 else 0.0,
        "settings": config.settings(),
        "stats": stats,
    }
    print(summary_line(summary), flush=True)
    if config.evaluate:
        summary["evaluation"] = run_evaluate(config.output, config.evaluation_output, config.s3)
    return summary


def too_large_rows(config: BackfillConfig, source: Resolved, files: list[InputFile], schema: pa.Schema) -> pa.Table:
    """Output rows (``image_too_large``, no predictions) for files listed over the byte cap."""
    cap = config.model.decode.max_bytes
    columns = {
        "path": [source.uri_for(f.path) for f in files],
        "label": [label_for(f.path, source.path) for f in files],
        "model": [config.model.name] * len(files),
        "error": [ImageTooLarge.code] * len(files),
        "error_message": [
            str(ImageTooLarge(f"file is {f.size} bytes, over the {cap}-byte cap (model.decode.max_bytes); not read"))
            for f in files
        ],
    }
    return pa.table({name: columns.get(name, [None] * len(files)) for name in schema.names}, schema=schema)


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


def warn_if_cpus_are_held(config: BackfillConfig, free_cpus: float, cluster_cpus: float) -> bool:
    """Other work on the same Ray (Serve replicas, other jobs) may hold the CPUs the job needs:
    then it waits, without progress, until they are released. Say so at start-up; the job is
    not refused, since they may be released. Returns whether it warned."""
    needed = config.actor_pool_size * config.num_cpus_per_actor + config.decode_cpus
    if needed <= free_cpus:
        return False
    logger.warning(
        "only %g of Ray's %g CPUs are free (other actors hold the rest, e.g. Serve replicas): the job needs %g "
        "(%d model actor(s) x %g CPU + %g CPU for a decode task) and waits until they are released",
        free_cpus,
        cluster_cpus,
        needed,
        config.actor_pool_size,
        config.num_cpus_per_actor,
        config.decode_cpus,
    )
    return True


def summary_line(summary: dict) -> str:
    settings = summary["settings"]
    return (
        f"backfill: {summary['rows']} rows written ({summary['errors']} errors, "
        f"{summary['skipped']} of {summary['inputs']} inputs already done) in {summary['seconds']:.1f} s, "
        f"{summary['img_per_s']:.1f} img/s -> {summary['output']} "
        f"[{settings['device']}, batch {settings['batch_size']}, "
        f"compile {'on' if settings['compile'] else 'off'}, torch threads {settings['cpu_threads']}, "
        f"{settings['actors']} actor(s)]"
    )


def _ensure_ray(address: str | None) -> None:
    """Use the current Ray session, or join ``address`` / start a local one (left running, as Ray Data does)."""
    if not ray.is_initialized():
        ray.init(address=address, **console.ray_init_options())
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
