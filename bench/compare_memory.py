"""What ``twinfer compare`` costs: time and peak memory to compare two synthetic classification
outputs of N rows each, at the default partition budget and a small one.

    python -m bench.compare_memory --rows 1000000

Each run is a fresh process (peak RSS is per process); the outputs are written once with the
backfill's schema (top-5, 70-character paths, a tenth of B's inputs not in A). Prints a table
and one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 250_000


def write_output(folder: Path, rows: int, offset: int, seed: int) -> None:
    from batch.predict_actor import output_schema
    from shared import ModelConfig
    from shared.labels import imagenet_categories, imagenet_wnids

    schema = output_schema(ModelConfig())
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names, wnids = np.array(imagenet_categories(), dtype=object), np.array(imagenet_wnids(), dtype=object)
    for start in range(0, rows, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, rows - start)
        ids = np.arange(offset + start, offset + start + n)
        truth = ids % 1000
        top = rng.integers(0, 1000, size=(n, 5))
        top[:, 0] = np.where(rng.random(n) < 0.7, truth, top[:, 0])
        scores = np.sort(rng.random((n, 5)), axis=1)[:, ::-1]
        columns = {
            "path": pa.array(
                [f"s3://bucket/imagenet/train/{wnids[t]}/image_{i:012d}.JPEG" for i, t in zip(ids, truth)]
            ),
            "label": pa.array(wnids[truth].tolist()),
            "model": pa.array(["synthetic"] * n),
            "error": pa.nulls(n, pa.string()),
            "error_message": pa.nulls(n, pa.string()),
            "top_labels": pa.FixedSizeListArray.from_arrays(pa.array(names[top.ravel()].tolist()), 5).cast(
                schema.field("top_labels").type
            ),
            "top_indices": pa.FixedSizeListArray.from_arrays(pa.array(top.ravel()), 5).cast(
                schema.field("top_indices").type
            ),
            "top_scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), 5).cast(
                schema.field("top_scores").type
            ),
        }
        pq.write_table(pa.table(columns, schema=schema), folder / f"part-{start:032x}.parquet")


def one_run(a: str, b: str, partition_bytes: int) -> dict:
    from batch.compare import compare_outputs

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch, pyarrow, pandas loaded
    started = time.perf_counter()
    report = compare_outputs(a, b, partition_bytes=partition_bytes)
    seconds = time.perf_counter() - started
    return {
        "rows_a": report["a"]["rows"],
        "rows_b": report["b"]["rows"],
        "partitions": report["partitions"],
        "partition_mib": partition_bytes / 2**20,
        "seconds": round(seconds, 2),
        "rows_per_s": round((report["a"]["rows"] + report["b"]["rows"]) / seconds),
        "rss_after_imports_mib": round(imported),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "top1_agreement": report["classify"]["top1_agreement"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partition-mib", type=float, nargs="+", default=[256, 64, 16])
    parser.add_argument("--run", nargs=3, metavar=("A", "B", "BYTES"), help=argparse.SUPPRESS)  # one measured run
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(one_run(args.run[0], args.run[1], int(args.run[2]))))
        return 0
    with tempfile.TemporaryDirectory() as root:
        a, b = Path(root) / "a", Path(root) / "b"
        write_output(a, args.rows, 0, seed=1)
        write_output(b, args.rows, args.rows // 10, seed=2)
        on_disk = sum(p.stat().st_size for p in a.iterdir()) / 2**20
        print(f"{args.rows} rows per side, {on_disk:.0f} MiB of Parquet per side")
        print("| partition budget | partitions | seconds | rows/s (both sides) | RSS after imports | peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mib in args.partition_mib:
            command = [sys.executable, "-m", "bench.compare_memory", "--run", str(a), str(b), str(int(mib * 2**20))]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(
                f"| {mib:g} MiB | {result['partitions']} | {result['seconds']} | {result['rows_per_s']} | "
                f"{result['rss_after_imports_mib']} MiB | {result['peak_rss_mib']} MiB |"
            )
            print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
