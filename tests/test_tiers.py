"""The fast tier stays free of processes: tests/conftest.py refuses a process to a test marked
none of ray/process/slow, and lets a marked one start it."""

import os
import subprocess

import pytest

from tests.conftest import _no_process_unless_marked


class Item:
    nodeid = "tests/test_x.py::test_y"

    def __init__(self, *markers: str):
        self.markers = markers

    def get_closest_marker(self, name: str):
        return name if name in self.markers else None


@pytest.mark.process  # the guard is off around this test itself; it is on inside each `with`
def test_an_unmarked_test_may_not_start_a_process_and_a_marked_one_may():
    with _no_process_unless_marked(Item()):
        with pytest.raises(RuntimeError, match=r"test_y starts a process: mark it @pytest.mark.process"):
            subprocess.run(["true"], check=True)
        with pytest.raises(RuntimeError, match="mark it"):
            os.fork()
    for marker in ("ray", "process", "slow"):
        with _no_process_unless_marked(Item(marker)):
            assert subprocess.run(["true"]).returncode == 0
    assert subprocess.run(["true"]).returncode == 0  # the patch is gone after the block
