"""How Serve's gRPC proxy loads the service (``grpc_options.grpc_servicer_functions``).

The generated registration (``open_inference_grpc_pb2_grpc``), with one change: a request that is
no message of its RPC's type reaches the ingress as ``Undecodable`` and is answered INVALID_ARGUMENT
``invalid_request`` (``grpc_service.GrpcInference``). With the generated deserializer it raises in
the proxy, and gRPC answers UNKNOWN with the exception's text. This module imports only gRPC and the
generated stubs: the proxy loads it, and nothing of the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

SERVICER_FUNCTION = "deployments.v2.grpc_servicer.add_to_server"


@dataclass(frozen=True)
class Undecodable:
    """A request's bytes that did not parse as its RPC's message (pickled to the ingress as is)."""

    size: int
    reason: str


def add_to_server(servicer, server) -> None:
    from deployments.v2 import open_inference_grpc_pb2_grpc as stubs

    generated = _Registration()
    stubs.add_GRPCInferenceServiceServicer_to_server(servicer, generated)
    handlers = {
        method: handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        for method, handler in generated.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(generated.service, handlers),))
    add_registered = getattr(server, "add_registered_method_handlers", None)  # grpcio >= 1.62
    if add_registered is not None:
        add_registered(generated.service, handlers)


class _Registration:
    """Stands in for the server while the generated function registers: keeps its handlers."""

    service = ""
    handlers: dict = {}

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, dict(handlers)


def _lenient(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as exc:
            return Undecodable(len(data), str(exc)[:200])

    return parse
