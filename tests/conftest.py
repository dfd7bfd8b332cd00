import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# compile: auto would compile every CPU model the tests build (seconds per batch size); tests that
# test compiling ask for it explicitly
os.environ.setdefault("TWINFER_AUTO_COMPILE", "0")

import subprocess  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import pytest  # noqa: E402

from shared import ModelConfig, ModelWrapper  # noqa: E402
from tests.scheduling import FilesAndGroups, order_for_workers  # noqa: E402

# Modules of fixtures shared across test files, registered once here: a session fixture imported
# into a test module instead becomes that module's own fixture, built again for it.
pytest_plugins = ("tests.backfill_pairs", "tests.s3_server")

# Test tiers: `make test-fast` runs what is marked none of these (no Ray, no other process);
# `make test` (CI) runs everything.
HEAVY_MARKERS = ("ray", "process", "slow")
# a test that uses one of these fixtures starts Ray (directly or through Serve)
RAY_FIXTURES = {"ray_session", "serve_ports", "serve_url", "serve_grpc_address", "standard_app"}
# ... and one that uses these starts another process (moto_server)
PROCESS_FIXTURES = {"s3_server"}
# short-lived helpers that libraries run for themselves, allowed in the fast tier
ALLOWED_COMMANDS = {"fc-list"}  # matplotlib's font cache, built once per process


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
        if used & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.process)
    order_for_workers(items)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test``'s workers: tests/scheduling.py."""
    return FilesAndGroups(config, log) if config.getvalue("dist") == "loadgroup" else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _no_process_unless_marked(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _no_process_unless_marked(item):
        yield


@contextmanager
def _no_process_unless_marked(item):
    """A test of the fast tier whose setup or body starts a process (Ray included: it starts its
    daemons with subprocess) fails at once, naming the marker it lacks, so the tiers stay what
    they say."""
    if any(item.get_closest_marker(name) for name in HEAVY_MARKERS):
        yield
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{item.nodeid} starts a process: mark it @pytest.mark.process "
            "(or ray/slow; tests/conftest.py), or it runs in the fast tier"
        )

    popen_init = subprocess.Popen.__init__

    def checked_popen(self, args, *rest, **kwargs):
        command = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if os.path.basename(str(command)) not in ALLOWED_COMMANDS:
            refuse()
        popen_init(self, args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", checked_popen)
        patch.setattr(os, "fork", refuse)
        patch.setattr(os, "posix_spawn", refuse)
        yield


@pytest.fixture(scope="session")
def embedded_wrapper() -> ModelWrapper:
    return ModelWrapper(ModelConfig())


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance per test process, each `make test` worker its own (online and offline tests
    share it)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_ports(ray_session):
    """Serve on the shared Ray instance (``bench.serving.start_serve``); Serve's gRPC options are
    fixed when it starts."""
    from ray import serve

    from bench.serving import start_serve

    ports = start_serve()
    yield ports.http, ports.grpc
    serve.shutdown()


@pytest.fixture(scope="session")
def serve_url(serve_ports):
    return f"http://127.0.0.1:{serve_ports[0]}"


@pytest.fixture(scope="session")
def serve_grpc_address(serve_ports):
    return f"127.0.0.1:{serve_ports[1]}"


@pytest.fixture(scope="session")
def standard_app(serve_url) -> str:
    """tests/serving.py's shared app, at the root of ``serve_url`` (which this returns)."""
    from tests.serving import deploy_standard_app

    deploy_standard_app()
    return serve_url
