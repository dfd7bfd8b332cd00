"""The backfill deletes or replaces only what it provably wrote; a folder holding anything else is
refused before anything runs (no Ray), and left byte-for-byte as it was. Local and S3 (moto).

The refusals come before Ray starts (``no_ray``). Where a test needs a real twinfer folder, a
backfill makes one on the test session's Ray; its inputs are over ``model.decode.max_bytes``, so
they are never read and their error rows cost no model work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from batch.config import BackfillConfig
from batch.pipeline import run_backfill
from tests import images
from twinfer import cli

TINY_CAP = {"decode": {"max_bytes": 100}}  # every test JPEG is larger: nothing is read, no Ray


@pytest.fixture
def no_ray(monkeypatch):
    """The checks must come before Ray: starting it fails the test."""
    import batch.pipeline

    def refuse(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(batch.pipeline, "_ensure_ray", refuse)


def write_inputs(root: Path, count: int = 3) -> dict[str, bytes]:
    files = {f"n01/img{i}.jpg": images.small_jpeg("chelsea", 40 + i) for i in range(count)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def users_parquet() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"region": ["north", "south"], "amount": [12.5, 7.25]}), sink)
    return sink.getvalue().to_pybytes()


def backfill(input: str, output: str, **overrides) -> dict:
    settings = dict(input=input, output=output, model=TINY_CAP, progress=False, min_rows_per_file=2)
    return run_backfill(BackfillConfig(**{**settings, **overrides}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session) -> Path:
    """``in/`` (3 inputs) and ``out/``, the real twinfer folder a finished backfill of them made
    (marker + parts); tests change copies of it (``finished_copy``)."""
    root = tmp_path_factory.mktemp("finished")
    write_inputs(root / "in")
    summary = backfill(str(root / "in"), str(root / "out"))
    assert summary["rows"] == 3 and (root / "out" / "_twinfer.json").is_file()
    return root


def finished_copy(finished: Path, output: Path) -> str:
    """A copy of the finished folder at ``output``; returns the input folder it was made from."""
    shutil.copytree(finished / "out", output)
    return str(finished / "in")


# ---- local -----------------------------------------------------------------------------------
def test_a_users_files_in_the_output_are_kept_and_the_job_refused(tmp_path, no_ray, capsys):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sales-2024.parquet").write_bytes(users_parquet())
    (out / ".tmp-foo").write_bytes(b"not twinfer's")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    code = cli.main(["backfill", "--input", str(tmp_path / "in"), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "did not write" in err
        and "'sales-2024.parquet'" in err
        and "'.tmp-foo'" in err
        and "Nothing was changed" in err
    )
    assert snapshot(out) == before


def test_a_twinfer_named_part_file_without_twinfer_metadata_is_refused(tmp_path, finished):
    out = tmp_path / "out"
    source = finished_copy(finished, out)  # a real twinfer folder: marker + parts
    impostor = "part-" + "ab" * 16 + ".parquet"
    (out / impostor).write_bytes(users_parquet())  # at the top, outside any shard folder
    before = snapshot(out)
    with pytest.raises(ValueError, match="outside shard folders"):
        backfill(source, str(out))
    assert snapshot(out) == before
    (out / impostor).unlink()
    (out / "_twinfer" / "done" / "000000.json").unlink()  # the shard is resumed: its folder is read
    (out / "shard-000000" / impostor).write_bytes(users_parquet())
    before = snapshot(out)
    with pytest.raises(Exception, match=f"without its metadata \\({impostor}\\)"):
        backfill(source, str(out))
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("_twinfer/")} == {
        k: v for k, v in before.items() if not k.startswith("_twinfer/")
    }


def test_twinfer_named_files_without_the_marker_are_refused_and_kept(tmp_path, no_ray):
    """Nothing in a folder without the job marker is twinfer's, whatever its name."""
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / ("part-" + "0" * 32 + ".parquet")).write_bytes(b"PAR1 cut short")
    (out / (".tmp-" + "1" * 32)).write_bytes(b"half a file")
    before = snapshot(out)
    with pytest.raises(ValueError, match="no _twinfer.json"):
        backfill(str(tmp_path / "in"), str(out))
    assert snapshot(out) == before


def test_a_subfolder_or_a_forged_marker_is_refused(tmp_path, no_ray):
    write_inputs(tmp_path / "in")
    nested = tmp_path / "nested"
    (nested / "2024").mkdir(parents=True)
    with pytest.raises(ValueError, match="'2024/'"):
        backfill(str(tmp_path / "in"), str(nested))
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "_twinfer.json").write_text('{"anything": 1}')
    with pytest.raises(ValueError, match="_twinfer.json that twinfer did not write"):
        backfill(str(tmp_path / "in"), str(forged))
    assert (forged / "_twinfer.json").read_text() == '{"anything": 1}' and list((nested / "2024").iterdir()) == []


def test_resume_into_another_models_folder_is_refused(tmp_path, finished):
    out = tmp_path / "out"
    source = finished_copy(finished, out)
    before = snapshot(out)
    with pytest.raises(ValueError, match="model 'efficientnet_lite0' .*this job runs 'resnet152'"):
        backfill(source, str(out), model={**TINY_CAP, "name": "resnet152", "weights": "random"})
    assert snapshot(out) == before
    marker = json.loads((out / "_twinfer.json").read_text())
    assert marker == {"format": "twinfer-backfill", "version": 2, "model": "efficientnet_lite0", "task": "classify"}


def test_a_resume_in_a_marked_folder_removes_only_twinfers_leftovers(tmp_path, ray_session):
    files = write_inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    first = backfill(str(tmp_path / "in"), str(out))  # 4 rows, 2 per file
    assert first["rows"] == 4 and first["files"] == 2
    shard = out / "shard-000000"
    written = sorted(p.name for p in shard.iterdir())
    dropped = shard / written[0]
    dropped.write_bytes(b"PAR1 cut short")  # as a crash on a filesystem without atomic renames leaves it
    (shard / (".tmp-" + "f" * 32)).write_bytes(b"half a file")
    (out / "_twinfer" / "done" / "000000.json").unlink()  # killed before the shard was marked done
    again = backfill(str(tmp_path / "in"), str(out))
    assert again["rows"] == 2 and again["skipped"] == 2 and again["files"] == 1
    assert sorted(p.name for p in shard.iterdir()) == written  # the same rows, the same file name
    assert sorted(p.name for p in out.iterdir()) == ["_twinfer", "_twinfer.json", "shard-000000"]
    paths = pq.read_table(out).column("path").to_pylist()
    assert sorted(paths) == sorted(str(tmp_path / "in" / rel) for rel in files)


def test_an_empty_existing_folder_is_claimed(tmp_path, ray_session):
    write_inputs(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    assert backfill(str(tmp_path / "in"), str(tmp_path / "out"))["rows"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_twinfer", "_twinfer.json", "shard-000000"]


# ---- evaluation report -----------------------------------------------------------------------
def test_the_evaluation_report_never_replaces_a_users_file(tmp_path, finished, capsys):
    out = tmp_path / "out"
    report = tmp_path / "out.evaluation.json"  # the default location, beside the output
    report.write_text('{"quarter": "Q3"}')
    with pytest.raises(ValueError, match="not a twinfer evaluation report"):
        backfill(str(finished / "in"), str(out), evaluate=True)
    assert report.read_text() == '{"quarter": "Q3"}' and not out.exists()  # refused before the job

    finished_copy(finished, out)
    assert cli.main(["evaluate", "--predictions", str(out)]) == 2
    assert "not a twinfer evaluation report" in capsys.readouterr().err and report.read_text() == '{"quarter": "Q3"}'
    assert cli.main(["evaluate", "--predictions", str(out), "--output", str(out / "eval.json")]) == 2
    assert "inside the predictions folder" in capsys.readouterr().err and not (out / "eval.json").exists()

    report.unlink()
    assert cli.main(["evaluate", "--predictions", str(out)]) == 0
    written = json.loads(report.read_text())
    assert written["format"] == "twinfer-evaluation/1" and written["excluded"]["errors"] == 3
    assert cli.main(["evaluate", "--predictions", str(out)]) == 0  # its own report is replaced


# ---- S3 --------------------------------------------------------------------------------------
def test_s3_output_holding_a_users_objects_is_refused_and_kept(s3_server, tmp_path, no_ray):
    write_inputs(tmp_path / "in")
    s3_server.create_bucket("owned")
    fs = s3_server.filesystem()
    users = {"owned/mixed/sales-2024.parquet": users_parquet(), "owned/mixed/.tmp-foo": b"not twinfer's"}
    for key, data in users.items():
        s3_server.put(key, data)
    s3_server.put("owned/legacy/part-" + "0" * 32 + ".parquet", users_parquet())  # no marker, no metadata
    for output, expected in (("s3://owned/mixed", "'sales-2024.parquet'"), ("s3://owned/legacy", "no _twinfer.json")):
        with pytest.raises(ValueError, match=expected):
            backfill(str(tmp_path / "in"), output, s3=s3_server.options)
    for key, data in users.items():
        with fs.open_input_stream(key) as stream:
            assert stream.read() == data
    assert sorted(i.path for i in fs.get_file_info(pafs.FileSelector("owned", recursive=True)) if i.is_file) == sorted(
        [*users, "owned/legacy/part-" + "0" * 32 + ".parquet"]
    )


def test_s3_files_over_the_byte_cap_become_error_rows_and_count_as_done(s3_server, ray_session):
    """Never read: the listing's sizes decide; a resume writes nothing."""
    s3_server.create_bucket("capped")
    sizes = {}
    for i in range(3):
        data = images.small_jpeg("coffee", 40 + i)
        sizes[f"capped/in/n02/img{i}.jpg"] = len(data)
        s3_server.put(f"capped/in/n02/img{i}.jpg", data)
    summary = backfill("s3://capped/in", "s3://capped/out", s3=s3_server.options)
    assert summary["rows"] == 3 and summary["errors"] == 3 and summary["skipped"] == 0
    from batch.evaluate import read_predictions
    from batch.uris import S3Options

    table = read_predictions("s3://capped/out", S3Options(**s3_server.options))
    for row in table.to_pylist():
        key = row["path"].removeprefix("s3://")
        assert row["error"] == "image_too_large" and row["label"] == "n02" and row["top_labels"] is None
        assert f"{sizes[key]} bytes" in row["error_message"] and "100-byte cap" in row["error_message"]
    again = backfill("s3://capped/in", "s3://capped/out", s3=s3_server.options)
    assert again["rows"] == 0 and again["skipped"] == 3
    with pytest.raises(ValueError, match="this job runs 'vit_b16'"):
        backfill(
            "s3://capped/in",
            "s3://capped/out",
            s3=s3_server.options,
            model={**TINY_CAP, "name": "vit_b16", "weights": "random"},
        )
