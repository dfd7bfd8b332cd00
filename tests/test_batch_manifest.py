"""Manifests, plans and the lease, without Ray: S3 Inventory (CSV with URL-encoded keys, ORC,
Parquet, versioned rows), plain Parquet/CSV files and folders, the plan's shards, its checksum,
a changed manifest refused or planned anew, and one writer per output."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.orc as paorc
import pyarrow.parquet as pq
import pytest

from batch import layout
from batch.config import BackfillConfig
from batch.lease import Lease, LeaseHeld
from batch.manifest import ManifestError, open_manifest
from batch.ownership import JobIdentity, OutputFolder, claim_output
from batch.plan import PlanChanged, read_plan, write_plan
from batch.planning import settle_plan
from batch.uris import resolve
from twinfer import cli

LOCAL = pafs.LocalFileSystem()
# S3 Inventory CSV columns of a versioned inventory, as its fileSchema names them
SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag"
VERSIONED = [  # bucket, decoded key, version, latest, delete marker, size
    ("photos", "cats/a b+c.jpg", "v2", "true", "false", "120"),
    ("photos", "cats/a b+c.jpg", "v1", "false", "false", "100"),  # an older version: dropped
    ("photos", "dogs/ünï/100%.jpg", "v1", "true", "false", "7"),
    ("photos", "gone.jpg", "v3", "true", "true", ""),  # deleted: dropped
    ("photos", "x/y/z.png", "v1", "true", "false", "2048"),
]
KEPT = {"s3://photos/cats/a b+c.jpg": 120, "s3://photos/dogs/ünï/100%.jpg": 7, "s3://photos/x/y/z.png": 2048}


def rows_of(manifest) -> dict[str, int | None]:
    table = pa.Table.from_batches(list(manifest.batches()))
    return dict(zip(table.column("path").to_pylist(), table.column("size").to_pylist()))


def inventory(root: Path, fmt: str, data_files: dict[str, bytes]) -> Path:
    """A local copy of an inventory: <root>/dest/inv/photos/cfg/<date>/manifest.json, data under data/."""
    base = root / "dest"
    for key, data in data_files.items():
        (base / key).parent.mkdir(parents=True, exist_ok=True)
        (base / key).write_bytes(data)
    manifest = base / "inv/photos/cfg/2026-12-01T01-00Z/manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "sourceBucket": "photos",
        "destinationBucket": "arn:aws:s3:::dest",
        "version": "2016-11-30",
        "fileFormat": fmt,
        "fileSchema": SCHEMA if fmt == "CSV" else "message s3.inventory { ... }",
        "files": [{"key": key, "size": len(data), "MD5checksum": "0" * 32} for key, data in data_files.items()],
    }
    manifest.write_text(json.dumps(body))
    return manifest


def versioned_table() -> pa.Table:
    return pa.table(
        {
            "bucket": [r[0] for r in VERSIONED],
            "key": [r[1] for r in VERSIONED],
            "version_id": [r[2] for r in VERSIONED],
            "is_latest": [r[3] == "true" for r in VERSIONED],
            "is_delete_marker": [r[4] == "true" for r in VERSIONED],
            "size": pa.array([int(r[5]) if r[5] else None for r in VERSIONED], pa.int64()),
        }
    )


def test_an_inventory_csv_has_its_keys_url_decoded_and_keeps_only_latest_live_versions(tmp_path):
    from urllib.parse import quote_plus

    lines = [
        ",".join([f'"{b}"', f'"{quote_plus(k)}"', f'"{v}"', f'"{latest}"', f'"{dead}"', f'"{size}"', '""', '""'])
        for b, k, v, latest, dead, size in VERSIONED
    ]
    half = len(lines) // 2
    data = {
        "inv/photos/cfg/data/one.csv.gz": gzip.compress(("\n".join(lines[:half]) + "\n").encode()),
        "inv/photos/cfg/data/two.csv.gz": gzip.compress(("\n".join(lines[half:]) + "\n").encode()),
    }
    manifest = open_manifest(resolve(str(inventory(tmp_path, "CSV", data))))
    assert manifest.kind == "inventory" and len(manifest.files) == 2
    assert rows_of(manifest) == KEPT


@pytest.mark.parametrize("fmt", ["Parquet", "ORC"])
def test_an_inventory_in_parquet_or_orc_keeps_only_latest_live_versions(tmp_path, fmt):
    sink = pa.BufferOutputStream()
    if fmt == "Parquet":
        pq.write_table(versioned_table(), sink)
    else:
        paorc.write_table(versioned_table(), sink)
    path = inventory(tmp_path, fmt, {f"inv/photos/cfg/data/part.{fmt.lower()}": sink.getvalue().to_pybytes()})
    assert rows_of(open_manifest(resolve(str(path)))) == KEPT


def test_a_plain_parquet_or_csv_manifest_with_size_and_label(tmp_path):
    folder = tmp_path / "list"
    folder.mkdir()
    pq.write_table(
        pa.table({"uri": ["s3://b/1.jpg", "file:///data/2.jpg"], "size": [10, None], "label": ["n01", None]}),
        folder / "a.parquet",
    )
    pacsv.write_csv(pa.table({"uri": ["/data/3.jpg"], "label": ["cat"]}), folder / "b.csv")
    (folder / "_SUCCESS").write_text("")  # hidden: not a data file
    manifest = open_manifest(resolve(str(folder)))
    table = pa.Table.from_batches(list(manifest.batches()))
    assert table.to_pylist() == [
        {"path": "s3://b/1.jpg", "size": 10, "label": "n01"},
        {"path": "/data/2.jpg", "size": None, "label": None},
        {"path": "/data/3.jpg", "size": None, "label": "cat"},
    ]
    single = open_manifest(resolve(str(folder / "b.csv")))
    assert rows_of(single) == {"/data/3.jpg": None}


def test_a_manifest_without_a_uri_column_or_with_relative_uris_is_refused(tmp_path):
    pq.write_table(pa.table({"path": ["s3://b/1.jpg"]}), tmp_path / "nouri.parquet")
    with pytest.raises(ManifestError, match="no 'uri' column"):
        list(open_manifest(resolve(str(tmp_path / "nouri.parquet"))).batches())
    pq.write_table(pa.table({"uri": ["s3://b/1.jpg", "images/2.jpg"]}), tmp_path / "relative.parquet")
    with pytest.raises(ManifestError, match="'images/2.jpg' is neither"):
        list(open_manifest(resolve(str(tmp_path / "relative.parquet"))).batches())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="expected a manifest.json"):
        open_manifest(resolve(str(tmp_path / "notes.txt")))


def manifest_file(path: Path, count: int, start: int = 0) -> Path:
    pq.write_table(
        pa.table(
            {
                "uri": [f"s3://b/k{i:05d}.jpg" for i in range(start, start + count)],
                "size": list(range(start, start + count)),
            }
        ),
        path,
        row_group_size=7,  # several batches: shards cut across them
    )
    return path


def test_a_plan_is_fixed_size_shards_and_is_deterministic(tmp_path):
    manifest = open_manifest(resolve(str(manifest_file(tmp_path / "m.parquet", 25))))
    plans = []
    for name in ("one", "two"):
        out = str(tmp_path / name)
        plans.append(
            write_plan(
                LOCAL,
                out,
                manifest.batches(),
                source="m",
                fingerprint=manifest.fingerprint,
                shard_rows=10,
                extensions=None,
            )
        )
        shards = [pq.read_table(layout.plan_shard_file(out, s)) for s in range(3)]
        assert [t.num_rows for t in shards] == [10, 10, 5]
        assert pa.concat_tables(shards).column("path").to_pylist() == [f"s3://b/k{i:05d}.jpg" for i in range(25)]
        assert read_plan(LOCAL, out) == plans[-1]
    assert plans[0] == plans[1] and plans[0].shards == 3 and plans[0].rows == 25
    other = open_manifest(resolve(str(manifest_file(tmp_path / "n.parquet", 25, start=1))))
    changed = write_plan(
        LOCAL, str(tmp_path / "three"), other.batches(), source="m", fingerprint="x", shard_rows=10, extensions=None
    )
    assert changed.rows_sha256 != plans[0].rows_sha256  # the checksum covers the rows


def test_extensions_filter_the_plan(tmp_path):
    pq.write_table(pa.table({"uri": ["/d/a.JPG", "/d/b.png", "/d/c.jpeg", "/d/d.txt"]}), tmp_path / "m.parquet")
    manifest = open_manifest(resolve(str(tmp_path / "m.parquet")))
    out = str(tmp_path / "out")
    plan = write_plan(
        LOCAL, out, manifest.batches(), source="m", fingerprint="f", shard_rows=10, extensions=("jpg", ".jpeg")
    )
    assert plan.rows == 2 and pq.read_table(layout.plan_shard_file(out, 0)).column("path").to_pylist() == [
        "/d/a.JPG",
        "/d/c.jpeg",
    ]


def test_a_changed_manifest_is_refused_unless_replanned(tmp_path):
    path = manifest_file(tmp_path / "m.parquet", 12)
    out = tmp_path / "out"
    config = BackfillConfig(input_manifest=str(path), output=str(out), shard_rows=5)
    target = resolve(str(out))
    first = settle_plan(config, target, str(out), ensure_ray=None)
    assert first.shards == 3 and settle_plan(config, target, str(out), ensure_ray=None) == first  # resumed as is
    (out / "shard-000001").mkdir()
    result = out / "shard-000001" / ("part-" + "a" * 32 + ".parquet")
    result.write_bytes(b"a result of the old plan")
    users = out / "shard-000001" / "notes.txt"
    users.write_text("not twinfer's")
    with pytest.raises(PlanChanged, match="planned with"):
        settle_plan(config.model_copy(update={"shard_rows": 6}), target, str(out), ensure_ray=None)
    manifest_file(path, 13)  # the manifest changes
    with pytest.raises(PlanChanged, match="its manifest changed.*--replan"):
        settle_plan(config, target, str(out), ensure_ray=None)
    assert read_plan(LOCAL, str(out)) == first and result.exists()
    again = settle_plan(config.model_copy(update={"replan": True}), target, str(out), ensure_ray=None)
    assert again.rows == 13 and again.fingerprint != first.fingerprint and read_plan(LOCAL, str(out)) == again
    assert not result.exists() and users.read_text() == "not twinfer's"  # only twinfer's files go


def test_the_cli_refuses_a_changed_manifest_before_any_work(tmp_path, capsys, monkeypatch):
    import batch.pipeline

    monkeypatch.setattr(batch.pipeline, "_ensure_ray", lambda address: pytest.fail("Ray was started"))
    path = manifest_file(tmp_path / "m.parquet", 4)
    out = tmp_path / "out"
    settle_plan(BackfillConfig(input_manifest=str(path), output=str(out)), resolve(str(out)), str(out), None)
    (out / "_twinfer.json").write_text(
        json.dumps({"format": "twinfer-backfill", "version": 2, "model": "efficientnet_lite0", "task": "classify"})
    )
    manifest_file(path, 5)
    code = cli.main(["backfill", "--input-manifest", str(path), "--output", str(out), "--no-progress"])
    assert code == 2 and "its manifest changed" in capsys.readouterr().err


def test_input_or_manifest_is_required_but_not_both(tmp_path):
    with pytest.raises(ValueError, match="give input .* or input_manifest"):
        BackfillConfig(output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not both"):
        BackfillConfig(
            input=str(tmp_path / "in"), input_manifest=str(tmp_path / "m.parquet"), output=str(tmp_path / "o")
        )


# ---- the lease -------------------------------------------------------------------------------
def test_a_live_lease_refuses_a_second_writer_and_a_stale_one_is_taken_over(tmp_path, caplog):
    out = str(tmp_path / "out")
    first = Lease(LOCAL, out, timeout_s=60, shown=out).acquire()
    try:
        with pytest.raises(LeaseHeld, match="being written by another backfill"):
            Lease(LOCAL, out, timeout_s=60, shown=out).acquire()
    finally:
        first.release()
    assert not Path(layout.state(out, "lease.json")).exists()  # released: removed

    dead = {"owner": "f" * 32, "host": "gone", "pid": 1, "heartbeat": time.time() - 61}  # another host
    Path(layout.state(out, "lease.json")).write_text(json.dumps(dead))
    with caplog.at_level("WARNING"):
        second = Lease(LOCAL, out, timeout_s=60, shown=out).acquire()
    try:
        assert "taking over the lease of pid 1 on gone" in caplog.text
        assert json.loads(Path(layout.state(out, "lease.json")).read_text())["owner"] == second.owner
    finally:
        second.release()


@pytest.mark.process  # a finished child's pid
def test_a_lease_of_a_gone_process_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess

    out = str(tmp_path / "out")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid no longer runs
    fresh = {"owner": "e" * 32, "host": socket.gethostname(), "pid": gone.pid, "heartbeat": time.time()}
    Path(layout.state(out, "lease.json")).parent.mkdir(parents=True)
    Path(layout.state(out, "lease.json")).write_text(json.dumps(fresh))
    Lease(LOCAL, out, timeout_s=600, shown=out).acquire().release()
    alive = {**fresh, "pid": os.getpid()}  # a live process on this host: refused
    Path(layout.state(out, "lease.json")).write_text(json.dumps(alive))
    with pytest.raises(LeaseHeld):
        Lease(LOCAL, out, timeout_s=600, shown=out).acquire()


def test_the_heartbeat_keeps_a_lease_fresh(tmp_path):
    out = str(tmp_path / "out")
    lease = Lease(LOCAL, out, timeout_s=0.8, shown=out).acquire()
    try:
        written = json.loads(Path(layout.state(out, "lease.json")).read_text())["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads(Path(layout.state(out, "lease.json")).read_text())["heartbeat"] == written:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
    finally:
        lease.release()


def test_the_cli_refuses_an_output_a_live_run_holds(tmp_path, capsys, monkeypatch):
    import batch.pipeline

    monkeypatch.setattr(batch.pipeline, "_ensure_ray", lambda address: pytest.fail("Ray was started"))
    path = manifest_file(tmp_path / "m.parquet", 3)
    out = tmp_path / "out"
    claim_output(LOCAL, str(out), JobIdentity("efficientnet_lite0", "classify"), OutputFolder(marked=False))
    holder = Lease(LOCAL, str(out), timeout_s=60, shown=str(out)).acquire()
    try:
        code = cli.main(["backfill", "--input-manifest", str(path), "--output", str(out), "--no-progress"])
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert code == 2 and "being written by another backfill" in err
    assert not (out / "_twinfer" / "plan").exists()  # refused before planning
