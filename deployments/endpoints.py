"""An HTTP route's handler, wrapped so that every outcome is the documented answer.

Each protocol renders errors its own way (``/v1``'s ``{"error": {"code", "message"}}``, the Open
Inference Protocol's ``{"error": "<code>: <message>"}``); what they share is here: the error is
the service's (``InferenceService.error``: mapped, counted by model and code, logged when
unexpected), and a method the route does not take is 405 ``method_not_allowed``, counted with the
model the path names. Routes take every method, so that 405 is counted like any other error.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.service import InferenceService
from shared.errors import MethodNotAllowed, TwinferError

Handler = Callable[[Request], Awaitable[Response]]


def endpoint(service: InferenceService, handler: Handler, render: Callable[[TwinferError], Response]) -> Handler:
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # CancelledError (the client went away) is no Exception: it propagates
            model = service.model_tag(request.path_params.get("model"))
            return render(service.error(exc, model, f"{request.method} {request.url.path}"))

    return answer


# every method reaches the handler, which answers 405 itself (``require``), counted like any error
ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def route(service: InferenceService, path: str, handler: Handler, render: Callable[[TwinferError], Response]) -> Route:
    return Route(path, endpoint(service, handler, render), methods=ANY_METHOD)


def require(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.url.path} takes {' or '.join(methods)}, not {request.method}")
