"""Paths: local listing never follows directory links and never reads a linked file outside the
input root (real symlinks); the output/input overlap check runs on resolved paths; S3 keys with
``.``/``..`` segments are refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from batch.config import BackfillConfig
from batch.listing import list_inputs
from batch.pipeline import run_backfill
from batch.uris import parse_uri
from tests import images


def tree(tmp_path: Path) -> Path:
    """in/: three real files, a directory loop, a link to a directory inside, links out of the root,
    a link to a file inside, a dangling link. outside/: files that must never be read.

    (One loop only: a loop that can also be entered through the alias makes the paths a walk that
    follows links would take grow exponentially.)"""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "n01").mkdir(parents=True)
    (root / "n02").mkdir(parents=True)
    (outside / "private").mkdir(parents=True)
    (root / "n01" / "a.jpg").write_bytes(images.small_jpeg("chelsea", 40))
    (root / "n02" / "c.jpg").write_bytes(images.small_jpeg("chelsea", 44))
    (root / "top.jpg").write_bytes(images.small_jpeg("coffee", 40))
    (outside / "secret.jpg").write_bytes(images.small_jpeg("rocket", 40))
    (outside / "private" / "b.jpg").write_bytes(images.small_jpeg("astronaut", 40))
    os.symlink(".", root / "n02" / "loop")  # n02/loop -> n02: n02/loop/loop/... without end
    os.symlink("n01", root / "alias")  # a directory link inside the root
    os.symlink(outside / "private", root / "escape")  # a directory link out of it
    os.symlink(outside / "secret.jpg", root / "n01" / "leak.jpg")  # a file link out of it
    os.symlink("a.jpg", root / "n01" / "same.jpg")  # a file link inside it
    os.symlink("missing.jpg", root / "dangling.jpg")
    return root


def test_listing_follows_no_directory_link_and_reads_no_file_outside_the_root(tmp_path, caplog):
    root = tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="batch.listing"):
        found = [p[len(str(root)) + 1 :] for p in list_inputs(pafs.LocalFileSystem(), str(root))]
    assert found == ["n01/a.jpg", "n01/same.jpg", "n02/c.jpg", "top.jpg"]
    for skipped in ("n02/loop", "alias", "escape", "n01/leak.jpg", "dangling.jpg"):
        assert f"{root}/{skipped}" in caplog.text, skipped


def test_a_linked_root_lists_like_the_real_one(tmp_path):
    root = tree(tmp_path)
    os.symlink(root, tmp_path / "root-link")
    linked = str(tmp_path / "root-link")
    found = [p[len(linked) + 1 :] for p in list_inputs(pafs.LocalFileSystem(), linked)]
    assert found == ["n01/a.jpg", "n01/same.jpg", "n02/c.jpg", "top.jpg"]


@pytest.mark.ray
def test_a_backfill_over_links_writes_one_row_per_real_input(tmp_path, ray_session):
    """End to end through the listing fan-out (every file is over the tiny byte cap: none is read)."""
    root = tree(tmp_path)
    config = BackfillConfig(
        input=str(root), output=str(tmp_path / "out"), model={"decode": {"max_bytes": 100}}, progress=False
    )
    summary = run_backfill(config)
    paths = sorted(pq.read_table(tmp_path / "out").column("path").to_pylist())
    assert paths == [f"{root}/n01/a.jpg", f"{root}/n01/same.jpg", f"{root}/n02/c.jpg", f"{root}/top.jpg"]
    assert summary["inputs"] == summary["rows"] == 4


def test_output_and_input_overlap_is_checked_on_resolved_paths(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "in-link")
    os.symlink(tmp_path / "in" / "preds", tmp_path / "preds-link")  # resolves inside the input
    os.symlink(tmp_path / "elsewhere", tmp_path / "out-link")
    for output in (
        tmp_path / "in-link" / "preds",
        tmp_path / "preds-link",
        tmp_path / "in-link",
        f"{tmp_path}/elsewhere/../in/p",
    ):
        with pytest.raises(ValidationError, match="output must not be inside the input"):
            BackfillConfig(input=str(tmp_path / "in"), output=str(output))
    with pytest.raises(ValidationError, match="input must not be inside the output"):
        BackfillConfig(input=str(tmp_path / "out-link" / "images"), output=str(tmp_path / "elsewhere"))
    BackfillConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out-link" / "preds"))  # truly apart


def test_s3_keys_with_dot_segments_are_refused():
    for uri in (
        "s3://b/x/../in",
        "s3://b/in/..",
        "s3://b/./in",
        "s3://b/x//in",
        "s3://anonymous@b/in/../../etc?region=us-east-1",
    ):
        with pytest.raises(ValueError, match=r"'\.\.' segment"):
            parse_uri(uri)
    with pytest.raises(ValidationError, match=r"'\.\.' segment"):
        BackfillConfig(input="s3://b/in", output="s3://b/x/../in/preds")
    assert parse_uri("s3://b/in/").path == "b/in" and parse_uri("s3://b/in..x/y.jpg").path == "b/in..x/y.jpg"
    with pytest.raises(ValidationError, match="output must not be inside the input"):
        BackfillConfig(input="s3://b/in", output="s3a://b/in/preds")
    BackfillConfig(input="s3://b/in", output="s3://b/in-preds")  # a shared prefix is not nesting
