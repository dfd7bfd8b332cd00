"""The Open Inference Protocol (KServe "v2") beside ``/v1``, on the same ingress: a protocol
adapter, nothing more. A request's N images are each decoded in the ingress's decode pool
(``ImageLoader.load``) and each sent through ``Ingress._call`` (retries, deadline) to the model's
``infer``, all at once, so they join the same ``@serve.batch`` queue as ``/v1`` requests; the
task turns the answers into output tensors (``shared.tasks``).

HTTP: ``Ingress.__call__`` hands every ``/v2/...`` path to ``v2_http``. gRPC: Serve's gRPC proxy
calls the ingress's methods named after the service's RPCs (``ServerLive`` ... ``ModelInfer``),
which this mixin provides.

One bad image fails the whole request, with its error naming the image's index. Errors are the
spec's ``{"error": "<code>: <message>"}`` with twinfer's HTTP status for that code, or over gRPC
the matching status code (``grpc_service.status_code``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.http import check_bearer, read_body
from deployments.metrics import NO_MODEL, UNKNOWN_MODEL
from deployments.v2 import grpc_service, rest
from deployments.v2.tensors import (
    EXTENSIONS,
    IMAGE_INPUT,
    PLATFORM,
    SERVER_NAME,
    VERSION,
    InferRequest,
    OutputTensor,
    per_image,
)
from shared import ImageLoader
from shared.errors import MethodNotAllowed, ModelNotFound, NotFound, Overloaded, TwinferError

logger = logging.getLogger("ray.serve")


def _server_version() -> str:
    try:
        return importlib.metadata.version("twinfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OpenInferenceProtocol:
    """Mixed into ``Ingress``; uses its ``handles``, ``loaders``, ``settings``, ``api_keys``,
    ``pool``, ``metrics`` and ``_call``."""

    # ---- HTTP -------------------------------------------------------------------------------------
    async def v2_http(self, request: Request, path: list[str]) -> Response:
        """``/v2/<path>``. Health routes are open, like ``/healthz`` (probes); the rest need the API
        key when keys are on."""
        model_tag = NO_MODEL
        try:
            if path in (["health", "live"], ["health", "ready"]):
                _require(request, "GET")
                live = path[1] == "live" or await self._v2_server_ready()
                return Response(status_code=200 if live else 400)  # the spec: 200 true, 4xx false, empty body
            if self.settings.api_keys_enabled:
                check_bearer(request, self.api_keys)
            if not path:
                _require(request, "GET")
                return JSONResponse(self._v2_server_metadata())
            if path[0] == "models" and len(path) >= 2:
                model, rest_of_path, version = path[1], path[2:], None
                model_tag = model if model in self.handles else UNKNOWN_MODEL
                if len(rest_of_path) >= 2 and rest_of_path[0] == "versions":
                    version, rest_of_path = rest_of_path[1], rest_of_path[2:]
                if not rest_of_path:
                    _require(request, "GET")
                    return JSONResponse(await self._v2_model_metadata(model, version))
                if rest_of_path == ["ready"]:
                    _require(request, "GET")
                    return Response(status_code=200 if await self._v2_model_ready(model, version) else 400)
                if rest_of_path == ["infer"]:
                    _require(request, "POST")
                    return await self._v2_http_infer(request, model, version)
            raise NotFound(f"no route {request.method} {request.url.path}")
        except Exception as exc:  # every error in the spec's format, counted like /v1's
            return rest.error_response(self._v2_error(exc, model_tag, f"{request.method} {request.url.path}"))

    async def _v2_http_infer(self, request: Request, model: str, version: str | None) -> Response:
        self._v2_loader(model, version)  # an unknown model is 404 before its body is read
        body = await read_body(request, self.settings.max_body_bytes)
        body = rest.decompress(body, request.headers.get("content-encoding"), self.settings.max_body_bytes)
        infer = rest.parse_infer(body, request.headers.get(rest.HEADER_LENGTH))
        return rest.infer_response(model, VERSION, infer, await self._v2_infer(model, version, infer))

    # ---- gRPC (inference.GRPCInferenceService; Serve calls these by the RPC's name) -------------------
    async def ServerLive(self, request, grpc_context=None):
        return grpc_service.messages().ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None):
        return grpc_service.messages().ServerReadyResponse(ready=await self._v2_server_ready())

    async def ModelReady(self, request, grpc_context=None):
        pb = grpc_service.messages()

        async def ready():
            return pb.ModelReadyResponse(ready=await self._v2_model_ready(request.name, request.version or None))

        return await self._v2_grpc(grpc_context, request.name, ready, pb.ModelReadyResponse)

    async def ServerMetadata(self, request, grpc_context=None):
        pb = grpc_service.messages()

        async def metadata():
            return pb.ServerMetadataResponse(**self._v2_server_metadata())

        return await self._v2_grpc(grpc_context, None, metadata, pb.ServerMetadataResponse)

    async def ModelMetadata(self, request, grpc_context=None):
        pb = grpc_service.messages()

        async def metadata():
            return grpc_service.model_metadata(pb, await self._v2_model_metadata(request.name, request.version or None))

        return await self._v2_grpc(grpc_context, request.name, metadata, pb.ModelMetadataResponse)

    async def ModelInfer(self, request, grpc_context=None):
        pb = grpc_service.messages()

        async def infer():
            self._v2_loader(request.model_name, request.model_version or None)
            parsed = grpc_service.infer_request(request, self.settings.max_body_bytes)
            tensors = await self._v2_infer(request.model_name, request.model_version or None, parsed)
            return grpc_service.infer_response(pb, request.model_name, VERSION, request.id, tensors)

        return await self._v2_grpc(grpc_context, request.model_name, infer, pb.ModelInferResponse)

    async def _v2_grpc(
        self, context, model: str | None, answer: Callable[[], Awaitable[Any]], empty: Callable[[], Any]
    ):
        """``answer()``, or an empty message with the error's status code and ``"<code>: <message>"``
        as details, set on Serve's gRPC context (the proxy copies them onto the call)."""
        model_tag = NO_MODEL if model is None else model if model in self.handles else UNKNOWN_MODEL
        try:
            if self.settings.api_keys_enabled:
                metadata = dict(context.invocation_metadata()) if context is not None else {}
                check_bearer(
                    SimpleNamespace(headers={"authorization": metadata.get("authorization", "")}), self.api_keys
                )
            return await answer()
        except Exception as exc:
            error = self._v2_error(exc, model_tag, "gRPC")
            if context is None:
                raise error from None
            context.set_code(grpc_service.status_code(error))
            context.set_details(f"{error.code}: {error}")
            return empty()

    # ---- the protocol, whatever the transport ---------------------------------------------------------
    def _v2_error(self, exc: Exception, model_tag: str, where: str) -> TwinferError:
        if isinstance(exc, BackPressureError):
            exc = Overloaded(f"model {model_tag!r} is at capacity, retry later ({exc})")
        elif not isinstance(exc, TwinferError):
            logger.error("unexpected error answering %s", where, exc_info=exc)
            exc = TwinferError("internal error; it is logged on the server under this request's id")
        self.metrics.errors.inc(tags={"model": model_tag, "code": exc.code})
        return exc

    def _v2_loader(self, model: str, version: str | None) -> ImageLoader:
        loader = self.loaders.get(model)
        if loader is None:
            raise ModelNotFound(f"model {model!r} is not served here; served: {', '.join(self.loaders)}")
        if version not in (None, VERSION):
            raise ModelNotFound(f"model {model!r} has no version {version!r}; its one version is {VERSION!r}")
        return loader

    def _v2_server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": _server_version(), "extensions": list(EXTENSIONS)}

    async def _v2_model_metadata(self, model: str, version: str | None) -> dict:
        """Shapes and widths from the task and the model replica's ``describe()`` (labels, dim)."""
        task = self._v2_loader(model, version).task
        described = await self._call(model, "describe")
        return {
            "name": model,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in task.v2_outputs(described).items()],
        }

    async def _v2_deployment_states(self) -> dict[str, str]:
        app = serve.get_replica_context().app_name
        status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
        deployments = status.applications[app].deployments
        return {
            name: str(d.status.value if hasattr(d.status, "value") else d.status) for name, d in deployments.items()
        }

    async def _v2_server_ready(self) -> bool:
        """Every deployment of the application HEALTHY, as ``/healthz`` has it."""
        return all(state == "HEALTHY" for state in (await self._v2_deployment_states()).values())

    async def _v2_model_ready(self, model: str, version: str | None) -> bool:
        from deployments.app import model_deployment_name  # the app module imports this one

        self._v2_loader(model, version)
        return (await self._v2_deployment_states()).get(model_deployment_name(model)) == "HEALTHY"

    async def _v2_infer(self, model: str, version: str | None, request: InferRequest) -> list[OutputTensor]:
        loader = self._v2_loader(model, version)
        task = loader.task
        params = task.params(request.parameters)
        outputs = task.v2_requested(request.outputs)
        with self.admission.admit(len(request.images)):
            items = await self._v2_load(model, loader, request.images)
            answers = await self._v2_answers(model, items, task.v2_params(params, outputs))
        return [OutputTensor.of(name, array) for name, array in task.v2_tensors(answers, outputs, params).items()]

    async def _v2_load(self, model: str, loader: ImageLoader, images: list[bytes]) -> list:
        """Each image decoded and checked on its own, in the decode pool; the first bad one (by
        index) fails the request. All are waited for: a decode thread cannot be stopped."""
        loop = asyncio.get_running_loop()

        async def load(data: bytes):
            started = time.perf_counter()
            item = await loop.run_in_executor(self.pool, loader.load, data)
            self.metrics.decode_seconds.observe(time.perf_counter() - started, tags={"model": model})
            return item

        loaded = await asyncio.gather(*(load(data) for data in images), return_exceptions=True)
        for index, item in enumerate(loaded):
            if isinstance(item, TwinferError):
                raise per_image(item, index) from None
            if isinstance(item, BaseException):
                raise item
        return loaded

    async def _v2_answers(self, model: str, items: list, params: dict) -> list:
        """One ``infer`` call per image, all in flight together (so they batch); on the first
        failure the others are cancelled."""
        calls = [asyncio.ensure_future(self._call(model, "infer", item, params)) for item in items]
        for call in calls:
            call.add_done_callback(_seen)
        try:
            answers = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        for index, answer in enumerate(answers):
            if isinstance(answer, TwinferError):  # a JPEG left for the device decoder that no decoder could read
                raise per_image(answer, index)
        return answers


def _seen(call: asyncio.Future) -> None:
    """Mark a call's outcome as seen: the failures after the first must not be logged as 'never retrieved'."""
    if not call.cancelled():
        call.exception()


def _require(request: Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.url.path} takes {method}, not {request.method}")
