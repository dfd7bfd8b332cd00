"""The server the soak harness runs against: its own Ray head and ``serve run`` on a config copy,
and what it needs to see and kill Serve's processes.

``OwnServe`` starts ``ray start --head --block`` (own temp dir, free port; never anyone else's
Ray) and ``serve run <config copy> --address`` against it, so that the harness can join the same
cluster to find process ids (the GCS actor table: no dashboard needed) and redeploy variants with
``serve run --non-blocking``. ``stop()`` ends only the processes it started, by their ids.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from bench.memory import import_psutil
from twinfer.ports import free_loopback_port
from twinfer.processes import with_default_sigint

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AUTH_MODE = "token"
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def local_config(config: dict, port: int, grpc_port: int | None = None) -> dict:
    out = copy.deepcopy(config)
    out.setdefault("http_options", {}).update(host="127.0.0.1", port=port)
    if grpc_port is not None and "grpc_options" in out:
        out["grpc_options"]["port"] = grpc_port
    return out


def with_replicas(config: dict, model: str, replicas: int, app: str = "twinfer") -> dict:
    """The config with ``num_replicas`` of ``model``'s deployment set (in the app's ``args``)."""
    out = copy.deepcopy(config)
    application = next(a for a in out["applications"] if a["name"] == app)
    entry = next(m for m in application["args"]["models"] if m["model"]["name"] == model and m.get("enabled", True))
    entry.pop("autoscaling_config", None)  # a fixed count instead of the autoscaler's
    entry["num_replicas"] = replicas
    return out


class OwnServe:
    def __init__(self, config: dict, workdir: Path, ingress: str = "default", ray_cpus: int = 4):
        self.port = free_loopback_port()
        self.grpc_port = free_loopback_port()
        self.gcs_port = free_loopback_port()
        self.config = local_config(config, self.port, self.grpc_port)
        self.workdir = workdir
        self.ray_cpus = ray_cpus
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        # Ray 2.60 turns token auth on for a head when ~/.ray/auth_token exists; the processes that
        # join (serve run, this harness) then need the mode too, so every one of ours states it
        self.env["RAY_AUTH_MODE"] = AUTH_MODE
        if ingress == "haproxy":  # read when Serve starts: the cluster's processes must have them
            self.env.update(HAPROXY_ENV)
        self.processes: list[subprocess.Popen] = []
        self.serve_run: subprocess.Popen | None = None
        self.ray_head: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str | None:
        return f"127.0.0.1:{self.grpc_port}" if "grpc_options" in self.config else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.workdir / log, "ab") as out:
            process = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def start(self, timeout_s: float = 900, head_attempts: int = 3) -> None:
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, head_attempts + 1):
            try:
                self._start_head(deadline)
                break
            except RuntimeError:
                # Ray gives its raylet a fixed 30 s to register: a loaded machine misses it now and then
                if attempt == head_attempts:
                    raise
                self.gcs_port = free_loopback_port()
        path = self.write_config(self.config, "serve_config.yaml")
        self.serve_run = self._spawn(
            with_default_sigint([str(BIN / "serve"), "run", str(path), "--address", self.address]), "serve-run.log"
        )
        wait_healthy(self.base_url, deadline, alive=lambda: self._check_alive(self.serve_run, "serve run", deadline))

    def _start_head(self, deadline: float) -> None:
        temp_dir = self.workdir / "ray"
        self.ray_head = self._spawn(
            [str(BIN / "ray"), "start", "--head", "--port", str(self.gcs_port), "--num-cpus", str(self.ray_cpus),
             "--num-gpus", "0", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
             "--include-dashboard", "false", "--disable-usage-stats", "--object-store-memory", str(1 << 30),
             "--block", *self._own_ports()],
            "ray-head.log",
        )  # fmt: skip
        while not (temp_dir / "ray_current_cluster").exists():  # written once the head is up
            self._check_alive(self.ray_head, "ray start", deadline)
            time.sleep(0.5)

    @staticmethod
    def _own_ports() -> list[str]:
        """Free ports for what would otherwise take a fixed default (8265, 10001) that another Ray on
        the same machine may hold."""
        flags = (
            "--dashboard-port",
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--metrics-export-port",
        )
        return [part for flag in flags for part in (flag, str(free_loopback_port()))]

    def write_config(self, config: dict, name: str) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def deploy(self, config: dict, name: str, timeout_s: float = 300) -> None:
        """``serve run --non-blocking`` of a config variant (same http_options): Serve applies it to the
        running cluster, as ``serve deploy`` would, and the command returns once it is submitted."""
        path = self.write_config(local_config(config, self.port, self.grpc_port), name)
        done = subprocess.run([str(BIN / "serve"), "run", str(path), "--address", self.address, "--non-blocking"],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"serve run --non-blocking {path} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _check_alive(self, process: subprocess.Popen, what: str, deadline: float) -> None:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {self.workdir}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in time; see {self.workdir}")

    def stop(self) -> None:
        """SIGINT to ``serve run`` (it shuts Serve down), then SIGTERM, later SIGKILL, to the Ray head
        and every process under it (collected first, by id)."""
        if self.serve_run and self.serve_run.poll() is None:
            self.serve_run.send_signal(signal.SIGINT)
            try:
                self.serve_run.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.serve_run.kill()
        if self.ray_head and self.ray_head.poll() is None:
            psutil = import_psutil()
            head = psutil.Process(self.ray_head.pid)
            tree = [head, *head.children(recursive=True)]
            for process in tree:
                _signal(process, signal.SIGTERM)
            _, alive = psutil.wait_procs(tree, timeout=30)
            for process in alive:
                _signal(process, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)
        for process in self.leftovers():  # e.g. of a head that failed to start: its processes name our temp dir
            _signal(process, signal.SIGKILL)

    def leftovers(self) -> list:
        """Processes still running whose command line names this server's own temp dir."""
        psutil = import_psutil()
        mine = str(self.workdir)
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if any(mine in part for part in process.info["cmdline"] or ()) and process.pid != os.getpid():
                found.append(process)
        return found


def _signal(process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except import_psutil().Error:
        pass


def wait_healthy(base_url: str, deadline: float, alive=lambda: None, consecutive: int = 3) -> float:
    """Poll ``/healthz`` until it answers 200 ``consecutive`` times in a row; returns the seconds taken."""
    started, streak = time.monotonic(), 0
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while streak < consecutive:
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base_url}/healthz not 200 in time")
            try:
                streak = streak + 1 if client.get("/healthz").status_code == 200 else 0
            except httpx.TransportError:
                streak = 0
            time.sleep(0.5)
    return time.monotonic() - started


# ---- the cluster's Serve processes (the harness joins the cluster with ray.init(address=...)) ----


def connect(address: str, auth_mode: str | None = None) -> None:
    """Join the cluster as a driver; ``auth_mode`` (RAY_AUTH_MODE) as the cluster's processes have it."""
    import ray

    if auth_mode and os.environ.get("RAY_AUTH_MODE") != auth_mode:
        os.environ["RAY_AUTH_MODE"] = auth_mode
        from ray._raylet import Config

        Config.initialize("")  # Ray reads the mode once, at import; refreshed as Ray does when it turns token auth on
    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", log_to_driver=False, logging_level="WARNING")


def serve_actors() -> list[dict]:
    """Live Serve actors from the GCS actor table: name, role, pid."""
    from ray._private.state import actors  # the dashboard-free view of the actor table

    out = []
    for info in actors(actor_state_name="ALIVE").values():
        name, pid = info["Name"], info["Pid"]
        if not name or not pid:
            continue
        if name.startswith("SERVE_REPLICA::"):
            app, deployment, _ = name.removeprefix("SERVE_REPLICA::").split("#", 2)
            out.append({"name": name, "role": deployment, "app": app, "pid": pid})
        elif name.startswith("SERVE_PROXY_ACTOR"):
            out.append({"name": name, "role": "proxy", "app": None, "pid": pid})
        elif name == "SERVE_CONTROLLER_ACTOR":
            out.append({"name": name, "role": "controller", "app": None, "pid": pid})
    return out


def process_groups(app: str) -> dict[str, list[int]]:
    """role -> pids, for ``bench.memory.RssSampler``: proxy, controller, and each deployment of ``app``."""
    groups: dict[str, list[int]] = {}
    for actor in serve_actors():
        if actor["app"] in (None, app):
            groups.setdefault(actor["role"], []).append(actor["pid"])
    return groups


def replica_pids(app: str, deployment: str) -> list[int]:
    return sorted(a["pid"] for a in serve_actors() if a["app"] == app and a["role"] == deployment)


def deployment_state(app: str, deployment: str) -> tuple[str, dict[str, int]]:
    """(application status, replica states of the deployment), from ``serve.status()``."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return "MISSING", {}
    found = status.deployments.get(deployment)
    return str(status.status), dict(found.replica_states) if found else {}


def wait_replicas(app: str, deployment: str, replicas: int, timeout_s: float) -> float:
    """Wait until the app is RUNNING with exactly ``replicas`` replicas of ``deployment`` RUNNING and
    alive in the actor table (old ones gone); returns the seconds taken."""
    started = time.monotonic()
    while True:
        app_status, states = deployment_state(app, deployment)
        if (
            app_status.endswith("RUNNING")
            and states == {"RUNNING": replicas}
            and len(replica_pids(app, deployment)) == replicas
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{app}/{deployment}: {app_status} {states} after {timeout_s} s")
        time.sleep(0.5)
