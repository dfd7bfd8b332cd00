"""The fast tier stays free of processes: tests/conftest.py refuses a process to a test marked
none of ray/process/slow, and lets a marked one start it. ``make test``'s workers take whole
files or groups, heaviest tier first (tests/scheduling.py)."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest, scheduling
from tests.conftest import _no_process_unless_marked
from tests.scheduling import order_for_workers, work_unit

TESTS = Path(__file__).resolve().parent


class Item:
    def __init__(self, *markers: str, path: str = "tests/test_x.py"):
        self.markers = markers
        self.nodeid = f"{path}::test_y"

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


def test_a_worker_takes_a_whole_file_or_a_whole_group(monkeypatch):
    monkeypatch.setattr(scheduling, "GROUPS", {"tests/test_b.py": "pairs", "tests/test_c.py": "pairs"})
    assert work_unit("tests/test_a.py::test_x[1-2]") == work_unit("tests/test_a.py::test_y") == "tests/test_a.py"
    assert work_unit("tests/test_a.py::Case::test_x") == "tests/test_a.py"
    assert work_unit("tests/test_b.py::test_x") == work_unit("tests/test_c.py::Case::test_y[p]") == "pairs"


def test_files_are_handed_out_heaviest_tier_first_each_kept_together_and_in_order(monkeypatch):
    monkeypatch.setattr(scheduling, "GROUPS", {"tests/test_g1.py": "g", "tests/test_g2.py": "g"})
    fast = [Item(path="tests/test_fast.py"), Item(path="tests/test_fast.py")]
    ray_then_fast = [Item("ray", path="tests/test_r.py"), Item(path="tests/test_r.py")]
    grouped = [Item(path="tests/test_g1.py"), Item("process", path="tests/test_g2.py")]
    process = Item("process", path="tests/test_p.py")
    items = [*fast, *ray_then_fast, grouped[0], process, grouped[1]]
    order_for_workers(items)
    assert items == [grouped[0], process, grouped[1], *ray_then_fast, *fast]


def fixtures_of(module: str) -> set[str]:
    """The names of the fixtures a module of tests/ defines."""
    tree = ast.parse((TESTS / f"{module}.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).startswith("pytest.fixture") for d in node.decorator_list)
    }


def asked_for(*fixtures: str) -> str:
    """A test or fixture that takes one of these by name."""
    return rf"^def \w+\([^)]*\b(?:{'|'.join(sorted(fixtures))})\b"


@pytest.mark.parametrize(
    "group, use",
    [
        ("backfill_pairs", asked_for(*fixtures_of("backfill_pairs"))),  # tests/backfill_pairs.py's backfills
        ("standard_app", asked_for("standard_app")),  # tests/serving.py's app
    ],
)
def test_every_file_using_shared_session_fixtures_is_in_their_group(group, use):
    uses = re.compile(use, re.MULTILINE)
    users = {f"tests/{path.name}" for path in TESTS.glob("test_*.py") if uses.search(path.read_text())}
    assert len(users) >= 2
    assert users == {path for path, name in scheduling.GROUPS.items() if name == group}


@pytest.mark.parametrize("plugin", conftest.pytest_plugins)
def test_no_test_file_imports_a_shared_fixture_which_would_build_it_again(plugin):
    """A fixture imported into a test module is that module's own: a session fixture would be
    built once more for each module importing it. tests/conftest.py registers their modules."""
    fixtures = fixtures_of(plugin.removeprefix("tests."))
    assert fixtures
    for path in TESTS.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == plugin:
                imported = {alias.name for alias in node.names} & fixtures
                assert not imported, f"{path.name} imports {imported} from {plugin}: ask for them by name"


@pytest.mark.process
def test_pytest_xdist_gives_a_groups_files_to_one_worker(tmp_path):
    """Two workers over four small files, two of them one group: each file, and the group's two
    files, run on one worker."""
    (tmp_path / "conftest.py").write_text(
        "from tests import scheduling\n"
        'scheduling.GROUPS = {"test_a.py": "g", "test_d.py": "g"}\n'
        "def pytest_xdist_make_scheduler(config, log):\n"
        "    return scheduling.FilesAndGroups(config, log)\n"
    )
    for name in "abcd":
        (tmp_path / f"test_{name}.py").write_text(
            "import os\n"
            + "".join(
                f"def test_{i}():\n"
                f"    with open('ran.txt', 'a') as out:\n"
                f"        out.write('{name} ' + os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
                for i in range(3)
            )
        )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup"],
        cwd=tmp_path,
        # the outer run's options (PYTEST_ADDOPTS: plugins, markers) are not this run's
        env={**{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}, "PYTHONPATH": str(TESTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers: dict[str, set[str]] = {}
    for line in (tmp_path / "ran.txt").read_text().splitlines():
        name, worker = line.split()
        workers.setdefault(name, set()).add(worker)
    assert sorted(workers) == list("abcd") and all(len(ran_on) == 1 for ran_on in workers.values()), workers
    assert workers["a"] == workers["d"], workers
