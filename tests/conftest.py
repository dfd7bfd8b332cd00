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
def serve_ports(ray_session):
    """Serve on the shared Ray instance: HTTP on a free loopback port, and the Open Inference
    Protocol's gRPC service on another (Serve's gRPC options are fixed when it starts)."""
    from ray import serve

    from deployments.transport import CLIENT_LIMIT_ENV, grpc_message_limit
    from deployments.v2.grpc_servicer import SERVICER_FUNCTION
    from shared.decode import DEFAULT_MAX_BYTES

    http_port = free_loopback_port()
    grpc_port = free_loopback_port()
    while grpc_port == http_port:
        grpc_port = free_loopback_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]},
        # the gRPC message limit serve_config.yaml gives Serve's proxies: the default body cap's
        controller_options={
            "runtime_env": {"env_vars": {CLIENT_LIMIT_ENV: str(grpc_message_limit(DEFAULT_MAX_BYTES))}}
        },
    )
    yield http_port, grpc_port
    serve.shutdown()


@pytest.fixture(scope="session")
def serve_url(serve_ports):
    return f"http://127.0.0.1:{serve_ports[0]}"


@pytest.fixture(scope="session")
def serve_grpc_address(serve_ports):
    return f"127.0.0.1:{serve_ports[1]}"
