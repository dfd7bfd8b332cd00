"""The benchmark's dataset: deterministic whatever the worker count, never left half-written."""

import io

import pytest
from PIL import Image

from bench.dataset import make_dataset


@pytest.mark.process
def test_the_same_images_from_one_or_several_worker_processes(tmp_path):
    serial = make_dataset(tmp_path / "one", 7, workers=1)
    parallel = make_dataset(tmp_path / "two", 7, workers=2)
    assert [p.relative_to(tmp_path / "one") for p in serial] == [p.relative_to(tmp_path / "two") for p in parallel]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(serial, parallel))
    assert len({p.read_bytes() for p in serial}) == 7  # no two equal
    for path in serial:
        image = Image.open(io.BytesIO(path.read_bytes()))
        assert image.format == "JPEG" and 400 <= max(image.size) <= 640
    assert not (tmp_path / "two.partial").exists()  # renamed into place
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted({p.parent.name for p in serial})


def test_leftover_empty_folders_are_replaced_and_an_existing_dataset_is_refused(tmp_path):
    import pytest

    root = tmp_path / "data"
    (root / "chelsea").mkdir(parents=True)  # what an interrupted older run could leave
    (tmp_path / "data.partial" / "coffee").mkdir(parents=True)  # and a cut-short staging folder
    assert len(make_dataset(root, 3)) == 3 and sum(1 for _ in root.rglob("*.jpg")) == 3
    assert not (tmp_path / "data.partial").exists()
    with pytest.raises(FileExistsError):
        make_dataset(root, 3)
    assert make_dataset(tmp_path / "empty", 0) == [] and (tmp_path / "empty").is_dir()
