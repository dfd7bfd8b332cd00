import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# compile: auto would compile every CPU model the tests build (seconds per batch size); tests that
# test compiling ask for it explicitly
os.environ.setdefault("TWINFER_AUTO_COMPILE", "0")

import pytest  # noqa: E402

from shared import ModelConfig, ModelWrapper  # noqa: E402
from twinfer.ports import free_loopback_port  # noqa: E402


@pytest.fixture(scope="session")
def embedded_wrapper() -> ModelWrapper:
    return ModelWrapper(ModelConfig())


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session (online and offline tests share it)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_session):
    """Serve on the shared Ray instance, HTTP on a free loopback port."""
    from ray import serve

    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
