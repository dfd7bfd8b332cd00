"""The benchmark's dataset: deterministic whatever the worker count, never left half-written."""

import io

from PIL import Image

from bench.dataset import make_dataset


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
