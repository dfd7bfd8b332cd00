"""A real two-node Ray cluster on this machine, with token authentication.

``ray start --head`` (1 CPU, no custom resource) and ``ray start --address`` (2 CPUs and the custom
resource ``worker``), both under ``RAY_AUTH_MODE=token``. Then the two product paths join it the
way an operator would: ``twinfer backfill --address ... --resources-per-actor '{"worker": 1}'``
and ``serve run`` of serve_config.yaml with ``resources: {worker: 1}`` on the model. Ray's state
API must place the backfill's model actors and the model replica on the worker node, and their
answers must equal the direct wrapper's.

Isolation: the cluster lives under its own temp dir (``ray start --temp-dir`` and ``RAY_TMPDIR``),
so ``ray start`` records it in ``<dir>/ray/ray_current_cluster``, never in /tmp/ray where other
``ray.init()`` calls on this machine look; it uses its own token file (``RAY_AUTH_TOKEN_PATH``),
never ~/.ray/auth_token; every port is a free one. Teardown stops only the process groups this
module started, then any process whose command line names its private temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from tests.images import small_jpeg
from twinfer.ports import free_loopback_port
from twinfer.samples import SAMPLE_NAMES

ROOT = Path(__file__).resolve().parent.parent
RAY_BIN = Path(sys.executable).parent / "ray"
SERVE_BIN = Path(sys.executable).parent / "serve"
DEFAULT_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where a plain `ray start` records itself
WORKER_RESOURCE = {"worker": 1}
PREDICTOR_CLASS = "Predictor"  # Ray Data names the pool's actors MapWorker(MapBatches(Predictor))
MODEL_REPLICA_CLASS = "ServeReplica:twinfer:model-efficientnet_lite0"

# timeout generous: other load on a 2-core box stretches its ~130 CPU-seconds
pytestmark = [pytest.mark.process, pytest.mark.timeout(480)]


# ---- the options (no cluster needed) ---------------------------------------------------------
def test_resources_per_actor_flag_reaches_the_backfill_config():
    from batch.cli import config_from_args
    from twinfer.cli import build_parser

    def parse(*extra):
        return config_from_args(build_parser().parse_args(["backfill", "--input", "/data", "--output", "/out", *extra]))

    assert parse().resources_per_actor == {}
    assert parse("--resources-per-actor", '{"worker": 1, "accelerator_type:T4": 0.5}').resources_per_actor == {
        "worker": 1.0,
        "accelerator_type:T4": 0.5,
    }
    for bad in ['{"worker": -1}', '{"CPU": 1}', '["worker"]']:
        with pytest.raises(ValidationError):
            parse("--resources-per-actor", bad)


def test_model_deployment_resources_are_validated():
    from deployments.config import AppArgs, ModelDeploymentConfig

    assert ModelDeploymentConfig().resources == {}
    assert ModelDeploymentConfig(resources={"worker": 1}).resources == {"worker": 1.0}
    for bad in [{"worker": -1}, {"GPU": 1}, {"worker": "many"}]:
        with pytest.raises(ValidationError):
            ModelDeploymentConfig(resources=bad)
    with pytest.raises(ValidationError, match="resourses"):  # a typo in serve_config.yaml fails the deploy
        AppArgs.model_validate({"models": [{"resourses": {"worker": 1}}]})


@dataclass
class Process:
    """A process this module started in its own session (so its group can be stopped alone)."""

    name: str
    popen: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in iter(self.popen.stdout.readline, ""):
            self.lines.append(line)

    def output(self, last: int = 60) -> str:
        return f"--- {self.name} ---\n" + "".join(self.lines[-last:])

    def wait_for(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            assert self.popen.poll() is None, f"{self.name} exited ({self.popen.returncode})\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name}: no {marker!r} in {timeout} s\n{self.output()}"
            time.sleep(0.2)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to its process group, then SIGKILL to what is left of it."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.reader.join(timeout=10)


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (this module's private temp dir)."""
    found = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@dataclass
class Cluster:
    base: Path  # private temp dir: Ray's temp dir and the token file live here
    env: dict[str, str]  # what every process joining this cluster runs with
    address: str  # GCS address, for --address
    dashboard: str  # http://..., for Ray's state API
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], **kwargs) -> Process:
        popen = subprocess.Popen(
            [str(a) for a in args],
            cwd=ROOT,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        process = Process(name, popen)
        self.started.append(process)
        return process

    def run(self, name: str, args: list[str], timeout: float) -> str:
        """Run a command to its end; its output."""
        process = self.start(name, args)
        try:
            process.popen.wait(timeout=timeout)
        finally:
            process.stop()
        assert process.popen.returncode == 0, process.output(200)
        return "".join(process.lines)

    @property
    def port(self) -> str:
        return self.address.rsplit(":", 1)[1]

    def named_in_default_address_file(self) -> bool:
        """Whether /tmp/ray/ray_current_cluster (what ray.init() joins by default) points here."""
        try:
            return DEFAULT_ADDRESS_FILE.read_text().strip().endswith(f":{self.port}")
        except FileNotFoundError:
            return False

    def start_node(self, name: str, args: list) -> Process:
        """``ray start --block ...`` until it reports the node up. Ray gives a raylet 30 s to register
        with the GCS (hard-coded in ray/_private/node.py); a loaded 2-core machine can miss that, so
        a node that timed out is stopped and started once more."""
        for attempt in (1, 2):
            process = self.start(name, args)
            try:
                process.wait_for("Ray runtime started", timeout=180)
                return process
            except AssertionError:
                process.stop()
                if attempt == 2 or "timed out during startup" not in "".join(process.lines):
                    raise

    def token(self) -> str:
        return (self.base / "auth_token").read_text().strip()

    def state(self, resource: str) -> list[dict]:
        """Ray's state API (the dashboard's /api/v0 endpoints that ``ray list`` reads), dead actors included."""
        response = httpx.get(
            f"{self.dashboard}/api/v0/{resource}",
            params={"limit": 10000, "detail": "true"},
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        assert body["result"], body
        return body["data"]["result"]["result"]

    def worker_node_id(self) -> str:
        nodes = self.state("nodes")
        ids = [n["node_id"] for n in nodes if n["state"] == "ALIVE" and "worker" in n["resources_total"]]
        assert len(ids) == 1, nodes
        return ids[0]


def _cluster_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(base / "auth_token"),  # not ~/.ray/auth_token: that is shared
        RAY_TMPDIR=str(base),  # Ray's default temp dir (and its ray_current_cluster) move under base
        RAY_USAGE_STATS_ENABLED="0",
        # 2 cores: start workers when something needs them, not num_cpus idle ones per node and driver
        RAY_enable_worker_prestart="0",
        RAY_prestart_worker_first_driver="0",
        PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p),
        HF_HUB_OFFLINE="1",
    )
    return env


@pytest.fixture(scope="module")
def cluster():
    # Short, because Ray's Unix sockets live under it (108-byte path limit).
    base = Path(tempfile.mkdtemp(prefix="twc-", dir="/tmp"))
    (base / "auth_token").write_text(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    (base / "auth_token").chmod(0o600)
    port, dashboard_port = free_loopback_port(), free_loopback_port()
    cluster = Cluster(base, _cluster_env(base), f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}")
    common = [
        "--block",
        "--temp-dir",
        base / "ray",
        "--node-ip-address",
        "127.0.0.1",
        "--disable-usage-stats",
        "--include-log-monitor",
        "false",
        "--dashboard-agent-listen-port",
        None,
        "--metrics-export-port",
        None,
    ]

    def node_args(extra):
        args = [RAY_BIN, "start", *extra, *common]
        return [free_loopback_port() if a is None else a for a in args]

    try:
        cluster.start_node(
            "head",
            node_args(
                [
                    "--head",
                    "--port",
                    port,
                    "--num-cpus",
                    1,
                    "--num-gpus",
                    0,
                    "--include-dashboard",
                    "true",
                    "--dashboard-host",
                    "127.0.0.1",
                    "--dashboard-port",
                    dashboard_port,
                    "--ray-client-server-port",
                    free_loopback_port(),
                ]
            ),
        )
        cluster.start_node(
            "worker",
            node_args(
                [
                    "--address",
                    cluster.address,
                    "--num-cpus",
                    2,
                    "--num-gpus",
                    0,
                    "--resources",
                    json.dumps(WORKER_RESOURCE),
                ]
            ),
        )
        yield cluster
    finally:
        for process in reversed(cluster.started):
            process.stop()
        for pid in _pids_naming(str(base)):  # e.g. a worker process that left its group; ours by its path
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)
        assert not cluster.named_in_default_address_file(), "another ray.init() could have joined this test's cluster"


def test_the_cluster_requires_its_token(cluster):
    assert httpx.get(f"{cluster.dashboard}/api/v0/nodes", timeout=30).status_code in (401, 403)
    nodes = [n for n in cluster.state("nodes") if n["state"] == "ALIVE"]  # with the token
    assert sorted(
        (n["is_head_node"], n["resources_total"].get("CPU"), n["resources_total"].get("worker")) for n in nodes
    ) == [
        (False, 2.0, 1.0),
        (True, 1.0, None),
    ]


def test_the_cluster_is_recorded_only_under_its_own_temp_dir(cluster):
    recorded = cluster.base / "ray" / "ray_current_cluster"
    assert recorded.read_text().strip().endswith(f":{cluster.port}")  # Ray records the node's own IP
    assert not cluster.named_in_default_address_file()
    session = (cluster.base / "ray" / "session_latest").resolve().name
    assert session.startswith("session_") and not (DEFAULT_ADDRESS_FILE.parent / session).exists()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("cluster-input")
    files = {f"{name}.jpg": small_jpeg(name, size=128) for name in SAMPLE_NAMES}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return {str(root / rel): data for rel, data in files.items()}


def test_backfill_model_actors_run_on_the_worker_node(cluster, photos, embedded_wrapper, tmp_path):
    output = tmp_path / "predictions"
    log = cluster.run(
        "backfill",
        [
            sys.executable,
            "-m",
            "twinfer.cli",
            "backfill",
            "--input",
            Path(next(iter(photos))).parent,
            "--output",
            output,
            "--address",
            cluster.address,
            "--resources-per-actor",
            json.dumps(WORKER_RESOURCE),
            "--batch-size",
            4,
            "--rows-per-file",
            2,
            "--decode-parallelism",
            1,
            "--no-progress",
        ],
        timeout=240,
    )
    assert f"backfill: {len(photos)} rows written (0 errors" in log, log[-3000:]

    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == sorted(photos)  # one row per input
    for path, data in photos.items():
        direct = embedded_wrapper.classify_bytes(data, top_k=1)[0]
        assert rows[path]["error"] is None and rows[path]["top_labels"][0] == direct["label"], path

    worker, actors = cluster.worker_node_id(), cluster.state("actors")
    predictors = [a for a in actors if PREDICTOR_CLASS in a["class_name"]]
    assert predictors, [a["class_name"] for a in actors]
    assert {a["node_id"] for a in predictors} == {worker}, (worker, predictors)


def test_serve_app_deploys_its_model_replica_on_the_worker_node(cluster, embedded_wrapper, tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_loopback_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    config["proxy_location"] = "HeadOnly"  # two nodes on one host cannot both bind the HTTP port
    (model,) = [m for m in config["applications"][0]["args"]["models"] if m.get("enabled", True)]
    model["resources"] = WORKER_RESOURCE
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))

    serve_run = cluster.start(
        "serve run", [SERVE_BIN, "run", "--address", cluster.address, tmp_path / "serve_config.yaml"]
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 180
            while True:  # the app's /healthz answers 200 once every deployment is up
                assert serve_run.popen.poll() is None, serve_run.output(200)
                assert time.monotonic() < deadline, "serve run never became healthy\n" + serve_run.output(200)
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            data = small_jpeg("coffee", size=200)
            response = client.post(
                "/v1/models/efficientnet_lite0/classify", content=data, headers={"content-type": "image/jpeg"}
            )
        assert response.status_code == 200, response.text
        assert [p["label"] for p in response.json()["predictions"]] == [
            p["label"] for p in embedded_wrapper.classify_bytes(data)
        ]

        worker = cluster.worker_node_id()
        replicas = [
            a for a in cluster.state("actors") if a["class_name"] == MODEL_REPLICA_CLASS and a["state"] == "ALIVE"
        ]
        assert [a["node_id"] for a in replicas] == [worker], (worker, replicas)
    finally:
        serve_run.stop()  # the cluster goes next: no need for serve run's own clean-up
