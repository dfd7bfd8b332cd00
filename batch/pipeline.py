"""The backfill: plan -> per-shard read (skip what is done, fetch) -> decode (CPU tasks) ->
predict (actors) -> Parquet per shard -> completion markers.

``run_backfill(config)`` is the one entry point (CLI, demo and benchmark call it); it returns a
summary dict and prints one summary line.

Before anything runs, the output folder is checked (``batch.ownership``: a folder twinfer cannot
prove is its own is refused, untouched) and, with ``evaluate``, so is the report's location.
Then the run takes the output's lease (``batch.lease``), finds or makes the plan
(``batch.planning``), skips the shards with completion markers and runs the others in groups of
``shards_per_dataset``, a fresh Ray Dataset per group (Ray keeps per-block records per Dataset
in the driver until it ends). The driver holds shard ids and per-file counts, never input keys.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset, TaskPoolStrategy

from batch import layout
from batch.config import BackfillConfig
from batch.evaluate import check_report_targets, default_report_uri, run_evaluate
from batch.fetch import Fetcher
from batch.lease import Lease
from batch.ownership import JobIdentity, OutputRefused, claim_output, inspect_output
from batch.planning import settle_plan
from batch.predict_actor import output_schema
from batch.progress import Progress
from batch.shards import (
    ShardDatasource,
    ShardJob,
    ShardPredictor,
    decode_fetched,
    done_shards,
    finalize_shard,
    write_results,
)
from batch.uris import redact_uri, resolve
from shared.wrapper import planned_output_dim
from twinfer import console

logger = logging.getLogger(__name__)

# Ray Data fuses a task-pool map into the following actor-pool map when their remote args are
# equal (operator_fusion.are_op_remote_args_compatible); decoding would then run serially inside
# the model actors. Read and decode tasks carry `max_calls` (an option actors cannot have), so
# read+decode fuse with each other but never with the predictor. It also recycles decode workers
# now and then, which bounds any slow leak in the image libraries.
DECODE_MAX_CALLS = 10_000
# A write task mostly waits on storage, and it must never wait for a CPU: a shard's read task holds
# its CPU until the whole shard is read, so on a small machine a write task asking for CPU would
# run only after the shard (no file, no progress, until then). The pool size bounds them instead.
WRITE_CPUS = 0


def build_dataset(config: BackfillConfig, job: ShardJob, shards: list[int], dim: int | None = None) -> Dataset:
    """The lazy Dataset for ``shards`` of the plan: one row per file it writes (``WRITTEN_SCHEMA``).
    ``dim``: the width of vector answers (embeddings) the output schema was planned with."""
    read_args = {"num_cpus": config.decode_cpus, "max_calls": DECODE_MAX_CALLS}
    ds = ray.data.read_datasource(
        ShardDatasource(job, shards),
        override_num_blocks=len(shards),  # one read task per shard (else Ray splits them into 200 blocks)
        concurrency=config.decode_parallelism,  # the same cap as decode, or the two would not fuse
        **read_args,
    )
    ds = ds.map_batches(
        decode_fetched,
        fn_kwargs={"model": config.model},
        batch_size=None,  # one read block at a time: a batch size would stop read+decode fusing
        batch_format="pyarrow",
        compute=TaskPoolStrategy(size=config.decode_parallelism),
        **read_args,
    )
    ds = ds.map_batches(
        ShardPredictor,
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
    write_args: dict = {}
    if isinstance(job.fs, pafs.LocalFileSystem):  # a local output is this machine's disk: write here
        write_args["label_selector"] = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return ds.map_batches(
        write_results,
        fn_kwargs={"job": job},
        batch_size=config.min_rows_per_file,
        batch_format="pyarrow",
        compute=TaskPoolStrategy(size=max(2, config.actor_pool_size)),
        num_cpus=WRITE_CPUS,
        **write_args,
    )


def run_backfill(config: BackfillConfig) -> dict:
    """Run (or resume) a backfill; returns the summary (rows, errors, img_per_s, output, ...).

    ``rows`` / ``errors`` / ``files`` count what this call wrote; ``skipped`` the inputs an earlier
    run already wrote; ``unfinished`` those still missing (a read that kept failing: run again);
    ``img_per_s`` is rows over the whole call (planning and start-up included).
    """
    started = time.perf_counter()
    shown = redact_uri(config.output)
    target = resolve(config.output, config.s3)
    fs, output = target.filesystem, target.path
    identity = JobIdentity(config.model.name, config.model.resolved_task)
    if config.evaluate:
        report_uri = config.evaluation_output or default_report_uri(config.output)
        check_report_targets(report_uri, config.s3)
    folder = inspect_output(fs, output, identity, shown)
    if folder.parts:
        raise OutputRefused(
            f"output {shown} holds results at the top of the folder, outside shard folders: not this layout. "
            "Nothing was changed: choose a new output"
        )
    claim_output(fs, output, identity, folder)
    dim = planned_output_dim(config.model)
    schema = output_schema(config.model, dim).with_metadata(identity.parquet_metadata())
    with Lease(fs, output, config.lease_timeout_s, shown):
        layout.remove_state_temps(fs, output)  # a killed run's half-written state files
        plan = settle_plan(config, target, shown, lambda: _ensure_ray(config.address))
        done = done_shards(fs, output)
        pending = [s for s in range(plan.shards) if s not in done][: config.max_shards]
        inputs_done = sum(plan.shard_size(s) for s in done if s < plan.shards)
        logger.info(
            "%d inputs in %d shards, %d shards already done in %s, %d to run",
            plan.rows,
            plan.shards,
            len(done),
            shown,
            len(pending),
        )
        progress = Progress(fs, output, plan.shards, plan.rows, len(done), inputs_done, config.progress_interval_s)
        written = {"rows": 0, "errors": 0, "files": 0}
        missing = 0
        stats = ""
        pending_rows = sum(plan.shard_size(s) for s in pending)
        cluster_cpus = None  # with an address (a remote cluster) the reservation decides
        if pending:
            _ensure_ray(config.address)
            if not config.address:
                cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
                check_cpus_leave_room_for_decode(config, cluster_cpus)
                warn_if_cpus_are_held(config, ray.available_resources().get("CPU", 0.0), cluster_cpus)
        config = config.resolved(pending_rows, cluster_cpus)  # what runs: no model build may see an auto value
        if pending:
            fetcher = Fetcher(config.s3, config.model.decode.max_bytes, config.fetch_threads, config.source_uri)
            job = ShardJob(fs, output, plan, fetcher, config.block_rows, schema)
            with _progress_bars(config.progress and not console.is_quiet()):
                for first in range(0, len(pending), config.shards_per_dataset):
                    group = pending[first : first + config.shards_per_dataset]
                    ds = build_dataset(config, job, group, dim)
                    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                        for shard, rows, errors in zip(
                            *(batch.column(c).to_pylist() for c in ("shard", "rows", "errors"))
                        ):
                            written["rows"] += rows
                            written["errors"] += errors
                            written["files"] += 1
                            progress.wrote(shard, rows, errors)
                    stats = ds.stats()
                    for result in ray.get([finalize_shard.remote(job, s) for s in group]):
                        if result["complete"]:
                            progress.shard_done(result["shard"], plan.shard_size(result["shard"]))
                        else:
                            missing += result["missing"]
                            progress.shard_left(result["shard"])
                    del ds
        progress.finish()
    seconds = time.perf_counter() - started
    rows = written["rows"]
    unplanned = plan.rows - inputs_done - pending_rows  # in shards max_shards left for a later run
    if missing:
        logger.warning(
            "%d inputs could not be read this time (see the warnings above): run again to retry them", missing
        )
    summary = {
        "output": shown,
        "model": config.model.name,
        "inputs": plan.rows,
        "shards": plan.shards,
        "shards_skipped": len(done),
        "skipped": plan.rows - rows - missing - unplanned,
        "unfinished": missing + unplanned,
        "rows": rows,
        "errors": written["errors"],
        "files": written["files"],
        "seconds": round(seconds, 3),
        "img_per_s": round(rows / seconds, 2) if seconds > 0 else 0.0,
        "settings": config.settings(),
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
