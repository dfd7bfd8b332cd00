"""The plan of a run: found under the output and checked, or made from the input.

A manifest (``input_manifest``) is streamed straight into shards. A plain ``input`` is first
listed by Ray tasks (``batch.fanout_listing``), and that listing is the manifest; its
fingerprint is the input URI, so a re-run resumes the listing it made instead of listing again
(inputs added under the prefix later are planned only by a run into a new output).
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs

from batch.config import BackfillConfig
from batch.fanout_listing import list_prefix, listing_batches
from batch.manifest import open_manifest
from batch.plan import Plan, PlanChanged, check_plan, discard_plan, read_plan, write_plan
from batch.uris import Resolved, redact_uri, resolve

logger = logging.getLogger(__name__)


def settle_plan(config: BackfillConfig, target: Resolved, shown: str, ensure_ray) -> Plan:
    """The plan this run executes. ``ensure_ray()`` is called before a listing needs Ray."""
    fs, output = target.filesystem, target.path
    manifest = None
    if config.input_manifest is not None:
        manifest = open_manifest(resolve(config.input_manifest, config.s3))
        fingerprint = manifest.fingerprint
    else:
        fingerprint = "listing:" + redact_uri(config.input)
    existing = read_plan(fs, output)
    if existing is not None:
        try:
            check_plan(existing, fingerprint, config.shard_rows, config.extensions, shown)
            return existing
        except PlanChanged:
            if not config.replan:
                raise
        logger.warning("output %s: planning anew (--replan); the results of the old plan are deleted", shown)
        discard_plan(fs, output)
    if manifest is not None:
        batches = manifest.batches()
    else:
        ensure_ray()
        source = resolve(config.input, config.s3)
        batches = listing_batches(fs, list_prefix(source, fs, output, config.list_tasks))
    plan = write_plan(
        fs,
        output,
        batches,
        source=redact_uri(config.source_uri),
        fingerprint=fingerprint,
        shard_rows=config.shard_rows,
        extensions=config.extensions,
    )
    listing = f"{output}/_twinfer/listing"
    if fs.get_file_info(listing).type == pafs.FileType.Directory:
        fs.delete_dir(listing)  # planned: the shard files hold it now
    return plan
