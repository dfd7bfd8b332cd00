"""Backfills at scale on one machine: ``python -m bench.scale --work DIR --out JSON``.

What it builds (once, under ``--work``): a tree of hard links to a few hundred small JPEGs
(``--inputs`` of them, 1 M by default, in folders of 1 000) and its manifest, so nothing is
listed; the first ``--small`` rows (10 k) as a second manifest; and, on a moto_server it starts,
a bucket of ``--s3-keys`` (20 k) objects with an S3 Inventory manifest (moto lists in quadratic
time, so nothing there is listed either).

What it measures, each backfill in a fresh driver process (``python -m bench.scale run``), on
the embedded model, running ``--shards`` shards of ``--shard-rows`` inputs (a full pass would
not fit), and prints as a table and writes as JSON:

* planning the 1 M-row manifest: seconds and driver RSS growth (goal <= 60 s, <= +64 MiB);
* time to the first output file, 1 M inputs vs 10 k (goal <= 1.2x);
* driver peak RSS after the same images, 1 M-input job vs 10 k-input job (goal <= +64 MiB);
* img/s, 1 M vs 10 k (goal within 10 %), past start-up (rows after the first file over the time
  after it) and over the whole run;
* S3 requests per image on moto, from its request log (goal 1 GET, 0 HEAD);
* a re-run of a finished 100 k-input job (goal <= 30 s, 0 image reads). The job is finished
  cheaply: a byte cap of 1 makes every input an ``image_too_large`` row, written without a read;
* a re-run after ``kill -9`` mid-shard (goal: only the missing keys read, 0 duplicate rows).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Driver RSS sampled at 10 Hz."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


# ---- building the inputs ----------------------------------------------------------------------
def build_tree(work: Path, inputs: int, small: int, sources: int = 300) -> tuple[Path, Path]:
    """(1 M manifest, 10 k manifest); reused when already built for these counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests import images
    from twinfer.samples import SAMPLE_NAMES

    big, little = work / f"manifest-{inputs}.parquet", work / f"manifest-{small}.parquet"
    if big.exists() and little.exists():
        return big, little
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(sources):
        path = src / f"{i:03d}.jpg"
        if not path.exists():
            path.write_bytes(images.small_jpeg(SAMPLE_NAMES[i % len(SAMPLE_NAMES)], 48 + i % 64))
        originals.append((path, path.stat().st_size))
    tree = work / "tree"
    writer = pq.ParquetWriter(big, pa.schema([("uri", pa.string()), ("size", pa.int64()), ("label", pa.string())]))
    for folder in range(0, inputs, 1000):
        directory = tree / f"d{folder // 1000:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        uris, sizes = [], []
        for i in range(folder, min(folder + 1000, inputs)):
            original, size = originals[i % sources]
            link = directory / f"{i:07d}.jpg"
            if not link.exists():
                os.link(original, link)
            uris.append(str(link))
            sizes.append(size)
        writer.write_table(pa.table({"uri": uris, "size": sizes, "label": [directory.name] * len(uris)}))
    writer.close()
    pq.write_table(pq.read_table(big).slice(0, small), little)
    return big, little


def start_moto(work: Path):
    from twinfer.ports import free_loopback_port

    port = free_loopback_port()
    log = open(work / "moto.log", "wb")
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return process, f"127.0.0.1:{port}", work / "moto.log"


def s3_options(endpoint: str) -> dict:
    return {
        "endpoint_override": endpoint,
        "scheme": "http",
        "region": "us-east-1",
        "access_key": "testing",
        "secret_key": "testing",
    }


def upload_s3(endpoint: str, keys: int, sources: Path) -> str:
    """``keys`` objects in bucket ``scale`` and their inventory; returns the manifest.json URI."""
    from concurrent.futures import ThreadPoolExecutor

    from batch.fetch import s3_client
    from batch.uris import S3Options

    client = s3_client(S3Options(**s3_options(endpoint)), "s3://scale/x", pool=32)
    client.create_bucket(Bucket="scale")
    client.create_bucket(Bucket="inventory")
    blobs = [p.read_bytes() for p in sorted(sources.glob("*.jpg"))]
    names = [(f"img/{i // 1000:03d}/{i:06d} a.jpg", blobs[i % len(blobs)]) for i in range(keys)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket="scale", Key=kv[0], Body=kv[1]), names))
    lines = "\n".join(f'"scale","{quote_plus(key)}","{len(data)}"' for key, data in names) + "\n"
    client.put_object(Bucket="inventory", Key="scale/cfg/data/0.csv.gz", Body=gzip.compress(lines.encode()))
    manifest = {
        "sourceBucket": "scale",
        "destinationBucket": "arn:aws:s3:::inventory",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size",
        "files": [{"key": "scale/cfg/data/0.csv.gz", "size": 0, "MD5checksum": "0" * 32}],
    }
    client.put_object(Bucket="inventory", Key="scale/cfg/manifest.json", Body=json.dumps(manifest).encode())
    return "s3://inventory/scale/cfg/manifest.json"


# ---- one backfill in this (fresh) process -------------------------------------------------------
def run_one(args) -> dict:
    os.environ.setdefault("TWINFER_AUTO_COMPILE", "0")
    import ray

    from batch.config import BackfillConfig
    from batch.ownership import JobIdentity, claim_output, inspect_output
    from batch.pipeline import run_backfill
    from batch.planning import settle_plan
    from batch.uris import resolve

    overrides = json.loads(args.settings)
    config = BackfillConfig(
        input_manifest=args.manifest,
        output=args.output,
        progress=False,
        progress_interval_s=30,
        **overrides,
    )
    result: dict = {}
    target = resolve(config.output, config.s3)
    identity = JobIdentity(config.model.name, config.model.resolved_task)
    claim_output(
        target.filesystem, target.path, identity, inspect_output(target.filesystem, target.path, identity, args.output)
    )
    with Peak() as planning:
        began = time.perf_counter()
        plan = settle_plan(config, target, config.output, None)
        result["plan_s"] = round(time.perf_counter() - began, 2)
    result.update(plan_rows=plan.rows, plan_rss_growth_mib=round((planning.peak - planning.start) / MIB, 1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    first: list[float] = []
    out = Path(args.output)
    began = time.perf_counter()

    def watch():
        while not first:
            if out.exists() and any(out.glob("shard-*/part-*.parquet")):
                first.append(time.perf_counter() - began)
                return
            time.sleep(0.05)

    if not args.output.startswith("s3://"):
        threading.Thread(target=watch, daemon=True).start()
    with Peak() as running:
        summary = run_backfill(config)
    first.append(None)  # stops the watcher
    result.update(
        first_file_s=round(first[0], 2) if first[0] is not None else None,
        run_s=summary["seconds"],
        rows=summary["rows"],
        img_per_s=summary["img_per_s"],
        # past start-up: the rows after the first file over the time after it
        steady_img_per_s=round((summary["rows"] - config.min_rows_per_file) / (summary["seconds"] - first[0]), 2)
        if first[0] is not None and summary["seconds"] > first[0]
        else None,
        shards_skipped=summary["shards_skipped"],
        skipped=summary["skipped"],
        rss_start_mib=round(running.start / MIB, 1),
        rss_peak_mib=round(running.peak / MIB, 1),
    )
    ray.shutdown()
    return result


def backfill(manifest: str, output: Path | str, **settings) -> dict:
    command = [sys.executable, "-m", "bench.scale", "run", "--manifest", manifest, "--output", str(output)]
    command += ["--settings", json.dumps(settings)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if done.returncode:
        raise RuntimeError(f"backfill failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def killed_and_rerun(manifest: Path, output: Path, settings: dict) -> dict:
    """kill -9 a backfill once it has written a few files of its first shard, then run it again."""
    import pyarrow.parquet as pq

    command = [sys.executable, "-m", "bench.scale", "run", "--manifest", str(manifest), "--output", str(output)]
    command += ["--settings", json.dumps(settings)]
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while len(list(output.glob("shard-*/part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    before = pq.read_table(output).num_rows
    again = backfill(str(manifest), output, **{**settings, "lease_timeout_s": 1})
    paths = pq.read_table(output).column("path").to_pylist()
    expected = settings["shard_rows"] * settings["max_shards"]
    return {
        "rows_before_rerun": before,
        "rows_read_by_rerun": again["rows"],
        "missing_before_rerun": expected - before,
        "rows_after": len(paths),
        "duplicate_rows": len(paths) - len(set(paths)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("run")
    one.add_argument("--manifest", required=True)
    one.add_argument("--output", required=True)
    one.add_argument("--settings", default="{}")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--s3-keys", type=int, default=20_000)
    parser.add_argument("--finished", type=int, default=100_000, help="inputs of the finished job re-run")
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=2, help="shards each timed backfill runs")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(json.dumps(run_one(args)), flush=True)
        return 0
    if not args.work or not args.out:
        parser.error("--work and --out are required")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("out-*"):
        shutil.rmtree(stale)
    began = time.perf_counter()
    big, little = build_tree(work, args.inputs, args.small)
    figures: dict = {"inputs": args.inputs, "small": args.small, "build_s": round(time.perf_counter() - began, 1)}
    common = {"shard_rows": args.shard_rows, "max_shards": args.shards, "batch_size": 16, "min_rows_per_file": 256}
    figures["large"] = backfill(str(big), work / "out-large", **common)
    figures["small_job"] = backfill(str(little), work / "out-small", **common)

    finished = work / f"manifest-finished-{args.finished}.parquet"
    if not finished.exists():
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(big).slice(0, args.finished), finished)
    cheap = {"shard_rows": 10_000, "model": {"decode": {"max_bytes": 1}}, "min_rows_per_file": 10_000}
    figures["finished_first_run"] = backfill(str(finished), work / "out-finished", **cheap)
    figures["finished_rerun"] = backfill(str(finished), work / "out-finished", **cheap)
    # three shards, one per Dataset: on a small machine a shard's files land together near its end,
    # so the kill lands between shards or inside one
    figures["killed"] = killed_and_rerun(
        little, work / "out-killed", {**common, "max_shards": 3, "shards_per_dataset": 1, "min_rows_per_file": 64}
    )

    moto, endpoint, log = start_moto(work)
    try:
        began = time.perf_counter()
        manifest = upload_s3(endpoint, args.s3_keys, work / "src")
        figures["s3_upload_s"] = round(time.perf_counter() - began, 1)
        marked = len(log.read_text(errors="replace").splitlines())
        s3_run = backfill(manifest, work / "out-s3", s3=s3_options(endpoint), **common)
        time.sleep(1)
        lines = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")).splitlines()[marked:]
        gets = sum('"GET /scale/' in line for line in lines)
        heads = sum('"HEAD /scale/' in line for line in lines)
        figures["s3"] = {
            **s3_run,
            "gets": gets,
            "heads": heads,
            "gets_per_image": round(gets / max(s3_run["rows"], 1), 3),
            "heads_per_image": round(heads / max(s3_run["rows"], 1), 3),
        }
    finally:
        moto.terminate()
        moto.wait()
    large, small = figures["large"], figures["small_job"]
    table = [
        (
            "planning a 1 M-row manifest",
            f"{large['plan_s']} s, RSS +{large['plan_rss_growth_mib']} MiB",
            "<= 60 s, <= +64 MiB",
        ),
        (
            "first output file, 1 M vs 10 k",
            f"{large['first_file_s']} s vs {small['first_file_s']} s "
            f"({large['first_file_s'] / small['first_file_s']:.2f}x)",
            "<= 1.2x",
        ),
        (
            "driver peak RSS, 1 M vs 10 k job",
            f"{large['rss_peak_mib']} vs {small['rss_peak_mib']} MiB "
            f"({large['rss_peak_mib'] - small['rss_peak_mib']:+.1f} MiB)",
            "<= +64 MiB",
        ),
        (
            "S3 requests per image (moto)",
            f"{figures['s3']['gets_per_image']} GET, {figures['s3']['heads_per_image']} HEAD "
            f"({figures['s3']['rows']} images)",
            "1 GET, 0 HEAD",
        ),
        (
            f"re-run of a finished {args.finished // 1000} k job",
            f"{figures['finished_rerun']['run_s']} s, {figures['finished_rerun']['rows']} rows read",
            "<= 30 s, 0 reads",
        ),
        (
            "re-run after kill -9 mid-shard",
            f"{figures['killed']['rows_read_by_rerun']} read for "
            f"{figures['killed']['missing_before_rerun']} missing, {figures['killed']['duplicate_rows']} duplicates",
            "only missing; 0 duplicates",
        ),
        (
            "img/s past start-up, 1 M vs 10 k",
            f"{large['steady_img_per_s']} vs {small['steady_img_per_s']} "
            f"({100 * (large['steady_img_per_s'] / small['steady_img_per_s'] - 1):+.1f} %)",
            "within 10 %",
        ),
        (
            "img/s whole run, 1 M vs 10 k",
            f"{large['img_per_s']} vs {small['img_per_s']} "
            f"({100 * (large['img_per_s'] / small['img_per_s'] - 1):+.1f} %)",
            "start-up included",
        ),
    ]
    figures["table"] = [{"figure": a, "measured": b, "goal": c} for a, b, c in table]
    width = max(len(a) for a, _, _ in table)
    for a, b, c in table:
        print(f"{a:<{width}}  {b:<60}  goal {c}")
    args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
