"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``): its RPCs
(``GrpcInference``, which the ingress exposes under the RPCs' names: Serve's gRPC proxy calls
them so), protobuf messages to ``InferRequest`` and back, and twinfer's errors as gRPC status codes.

A message's size is bounded by the transport before it is buffered (``deployments/transport.py``);
its bytes are then held in the ingress's byte budget while it is parsed (off the event loop) and
answered.

Nothing here imports the generated ``open_inference_grpc_pb2``: its messages live in package
``inference``, as do tritonclient's own generated ones, and protobuf refuses a second definition of
a symbol in one process. The functions take the message module as an argument; the ingress
replica imports ours (``messages()``), tests pass tritonclient's, which has the same messages.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

import grpc

from deployments.v2.grpc_servicer import Undecodable
from deployments.v2.protocol import OpenInference
from deployments.v2.tensors import (
    VERSION,
    InferRequest,
    InvalidRequest,
    OutputTensor,
    image_count,
    split_bytes_elements,
)
from shared.errors import BodyTooLarge, Overloaded, TwinferError, Unavailable

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}


@functools.cache
def messages():
    """The generated message module (imported on first use, in the ingress replica only)."""
    from deployments.v2 import open_inference_grpc_pb2

    return open_inference_grpc_pb2


def status_code(error: TwinferError) -> grpc.StatusCode:
    """At capacity is RESOURCE_EXHAUSTED, as Serve's own back-pressure answers over gRPC; a model
    that cannot be reached is UNAVAILABLE; the rest follows the HTTP status."""
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return _BY_HTTP_STATUS.get(error.http_status, grpc.StatusCode.INTERNAL)


def parameter(value) -> Any:
    """An ``InferParameter``'s value, whichever of its kinds is set (None when none is)."""
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def infer_request(request, max_bytes: int) -> InferRequest:
    """A ``ModelInferRequest`` -> ``InferRequest``; images in ``raw_input_contents`` (what
    tritonclient sends) or in the input's ``contents.bytes_contents``."""
    if len(request.inputs) != 1:
        raise InvalidRequest("the request must hold exactly one input, 'image' (BYTES, shape [N] or [N, 1])")
    tensor = request.inputs[0]
    count = image_count(tensor.name, tensor.datatype, list(tensor.shape))
    if "shared_memory_region" in tensor.parameters:
        raise InvalidRequest("shared-memory inputs are not supported: send the images in the request")
    raw = request.raw_input_contents
    contents = tensor.contents.bytes_contents
    size = sum(len(r) for r in raw) + sum(len(c) for c in contents)
    if size > max_bytes:
        raise BodyTooLarge(f"the images take {size} bytes; the limit is {max_bytes}")
    if raw:
        if len(raw) != 1 or contents:
            raise InvalidRequest("raw_input_contents must hold the one input, and contents then stays empty")
        images = split_bytes_elements(raw[0], count)
    else:
        if len(contents) != count:  # before any element is copied
            raise InvalidRequest(f"input 'image': shape says {count} image(s), contents hold {len(contents)}")
        images = list(contents)
    outputs = {}
    for output in request.outputs:
        if output.name in outputs:
            raise InvalidRequest(f"output {output.name!r} is requested twice")
        outputs[output.name] = {key: parameter(value) for key, value in output.parameters.items()}
    parameters = {key: parameter(value) for key, value in request.parameters.items()}
    return InferRequest(images, parameters, outputs or None, request.id)


def infer_response(pb, model: str, version: str, request_id: str, tensors: list[OutputTensor]):
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``, as Triton answers."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for tensor in tensors:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw())
    return response


def model_metadata(pb, metadata: dict):
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for kind in ("inputs", "outputs"):
        for tensor in metadata[kind]:
            getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response


class GrpcInference:
    """The service's RPCs. Health RPCs are open, like HTTP's; the rest need the API key (metadata
    ``authorization: Bearer <key>``) when keys are on. Every failure sets the call's status code
    and ``"<code>: <message>"`` as its details on Serve's gRPC context, which the proxy copies
    onto the call, and answers the RPC's empty message. A request whose bytes were no message
    (``grpc_servicer.Undecodable``) is ``invalid_request``."""

    def __init__(self, protocol: OpenInference, pb=None):
        self.protocol = protocol
        self.service = protocol.service
        self._pb = pb  # the message module; ours (``messages()``) unless a test passes tritonclient's

    @property
    def pb(self):
        return self._pb or messages()

    async def ServerLive(self, request, context=None):
        async def live():
            return self.pb.ServerLiveResponse(live=True)

        return await self._answer(context, request, None, live, self.pb.ServerLiveResponse, authorize=False)

    async def ServerReady(self, request, context=None):
        async def ready():
            return self.pb.ServerReadyResponse(ready=await self.protocol.server_ready())

        return await self._answer(context, request, None, ready, self.pb.ServerReadyResponse, authorize=False)

    async def ModelReady(self, request, context=None):
        async def ready():
            return self.pb.ModelReadyResponse(ready=await self.protocol.model_ready(request.name, request.version))

        return await self._answer(context, request, "name", ready, self.pb.ModelReadyResponse)

    async def ServerMetadata(self, request, context=None):
        async def metadata():
            return self.pb.ServerMetadataResponse(**self.protocol.server_metadata())

        return await self._answer(context, request, None, metadata, self.pb.ServerMetadataResponse)

    async def ModelMetadata(self, request, context=None):
        async def metadata():
            return model_metadata(self.pb, await self.protocol.model_metadata(request.name, request.version))

        return await self._answer(context, request, "name", metadata, self.pb.ModelMetadataResponse)

    async def ModelInfer(self, request, context=None):
        async def infer():
            name, version = request.model_name, request.model_version
            self.protocol.model(name, version)  # an unknown model is NOT_FOUND before the message is read
            cap = self.service.settings.max_body_bytes
            with self.service.admission.body_bytes() as hold:
                hold.grow(request.ByteSize())
                parsed = await self.service.offload(infer_request, request, cap)
                tensors = await self.protocol.infer(name, version, parsed)
                return await self.service.offload(infer_response, self.pb, name, VERSION, request.id, tensors)

        return await self._answer(context, request, "model_name", infer, self.pb.ModelInferResponse)

    async def _answer(
        self,
        context,
        request,
        model_field: str | None,
        answer: Callable[[], Awaitable[Any]],
        empty: Callable[[], Any],
        authorize: bool = True,
    ):
        undecodable = isinstance(request, Undecodable)
        model = None if undecodable or model_field is None else getattr(request, model_field)
        try:
            if authorize:
                metadata = dict(context.invocation_metadata()) if context is not None else {}
                self.service.authorize(metadata.get("authorization"))
            if undecodable:
                raise InvalidRequest(
                    f"the request's {request.size} bytes are no message of this RPC's type ({request.reason})"
                )
            return await answer()
        except Exception as exc:
            error = self.service.error(exc, self.service.model_tag(model), "gRPC")
            if context is None:
                raise error from None
            context.set_code(status_code(error))
            context.set_details(f"{error.code}: {error}")
            return empty()
