"""The ingress deployment: one Starlette application for HTTP (``/v1``, ``/v2``, the page) and the
Open Inference Protocol's gRPC RPCs, all adapters over one ``InferenceService``.

Serve builds the HTTP application on the replica, after the constructor, through
``__serve_build_asgi_app__``; its gRPC proxy calls the methods named after the RPCs.
"""

from __future__ import annotations

import logging

from ray import serve
from starlette.applications import Starlette
from starlette.types import ASGIApp

from deployments import v1
from deployments.config import IngressConfig
from deployments.endpoints import route
from deployments.http import error_response
from deployments.openapi import build_openapi
from deployments.page import Site, redirecting_to_the_page
from deployments.service import InferenceService
from deployments.v2 import rest
from deployments.v2.grpc_service import GrpcInference
from deployments.v2.protocol import OpenInference

logger = logging.getLogger("ray.serve")


def http_app(service: InferenceService) -> ASGIApp:
    """Every HTTP route: ``/healthz`` and ``/v1``, ``/v2``, the page and ``/openapi.json`` (open, like
    ``/healthz``: ``deployments/page.py`` says why), then 404 for the rest."""
    site = Site(build_openapi(service.settings))
    routes = [
        *v1.routes(service),
        *rest.routes(OpenInference(service)),
        *site.routes(lambda path, handler: route(service, path, handler, error_response)),
        v1.not_found(service),
    ]
    return redirecting_to_the_page(Starlette(routes=routes))


@serve.ingress()
class Ingress:
    def __init__(self, models: dict, served: dict[str, dict], ingress: dict):
        """``models``: served name -> the model deployment's handle; ``served``: served name ->
        ``{"model": ModelConfig dict, "images_per_call": n}``; ``ingress``: ``IngressConfig``."""
        self.service = InferenceService(models, served, IngressConfig.model_validate(ingress))
        self.grpc = GrpcInference(OpenInference(self.service))
        if self.service.settings.api_keys_enabled:
            logger.info(
                "API keys on: %d key(s); every route but /healthz, /v2/health/*, the page and /openapi.json "
                "needs 'Authorization: Bearer'",
                len(self.service.api_keys),
            )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return http_app(self.service)

    # inference.GRPCInferenceService, by the RPCs' names
    async def ServerLive(self, request, grpc_context=None):
        return await self.grpc.ServerLive(request, grpc_context)

    async def ServerReady(self, request, grpc_context=None):
        return await self.grpc.ServerReady(request, grpc_context)

    async def ModelReady(self, request, grpc_context=None):
        return await self.grpc.ModelReady(request, grpc_context)

    async def ServerMetadata(self, request, grpc_context=None):
        return await self.grpc.ServerMetadata(request, grpc_context)

    async def ModelMetadata(self, request, grpc_context=None):
        return await self.grpc.ModelMetadata(request, grpc_context)

    async def ModelInfer(self, request, grpc_context=None):
        return await self.grpc.ModelInfer(request, grpc_context)
