"""Serve in this process, as the benchmarks and the test session start it: HTTP on a free loopback
port and the Open Inference Protocol's gRPC service on another, with the gRPC message limit
``serve_config.yaml`` gives Serve's proxies (``deployments.transport``). Ray must be running.

``bench.soak`` instead runs ``serve run serve_config.yaml`` as shipped (``bench.soak_server``):
what it tests is that command's own behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinfer.ports import free_loopback_port


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc}"


def start_serve() -> Ports:
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
        controller_options={
            "runtime_env": {"env_vars": {CLIENT_LIMIT_ENV: str(grpc_message_limit(DEFAULT_MAX_BYTES))}}
        },
    )
    return Ports(http_port, grpc_port)
