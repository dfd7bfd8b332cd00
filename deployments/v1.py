"""twinfer's own HTTP API: ``POST /v1/models/{m}/{task}`` (one image: a raw body, or the ``file``
field of a multipart form; JSON out), ``GET /v1/models`` and ``GET /healthz``.

Errors are ``{"error": {"code", "message"}}`` with the code's HTTP status (``shared/errors.py``).
``/healthz`` stays open with API keys on (load balancers and probes); without a valid key it says
up or down only, with one it also lists the deployments' states.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deployments.endpoints import require, route
from deployments.http import error_response, image_bytes
from deployments.service import InferenceService
from shared.errors import NotFound, WrongTask
from shared.tasks import TASKS


def routes(service: InferenceService) -> list[Route]:
    async def infer(request: Request) -> Response:
        name, route = request.path_params["model"], request.path_params["task"]
        service.authorize(request.headers.get("authorization"))
        if route not in TASKS:
            raise NotFound(f"no route {request.method} {request.url.path}")
        require(request, "POST")
        served = service.model(name)
        task = served.task
        if task.name != route:
            raise WrongTask(f"model {name!r} serves {task.name}, not {route}; use /v1/models/{name}/{task.name}")
        params = task.params(request.query_params)
        with service.admission.body_bytes() as hold:
            data = await image_bytes(request, service.settings.max_body_bytes, hold)
            (answer,) = await service.infer(served, [data], params, indexed=False)
        return JSONResponse(task.response(name, answer))

    async def list_models(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        require(request, "GET")
        return JSONResponse({"models": await service.describe_all()})

    async def healthz(request: Request) -> Response:
        """200 once every deployment of this application reports HEALTHY (all replicas up), else 503."""
        require(request, "GET")
        healthy = await service.ready()
        body: dict = {"status": "ok" if healthy else "unavailable"}
        if service.authorized(request.headers.get("authorization")):
            body["deployments"] = await service.deployment_states()
        return JSONResponse(body, status_code=200 if healthy else 503)

    return [
        route(service, "/healthz", healthz, error_response),
        route(service, "/v1/models", list_models, error_response),
        route(service, "/v1/models/{model}/{task}", infer, error_response),
    ]


def not_found(service: InferenceService) -> Route:
    """Every path no other route takes: 404 ``not_found`` (401 first with keys on: a client without
    a key is not even told whether a route exists)."""

    async def unknown(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        raise NotFound(f"no route {request.method} {request.url.path}")

    return route(service, "/{path:path}", unknown, error_response)
