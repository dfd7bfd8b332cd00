"""HTTP ingress: routes, per-request decode off the event loop, fan-out to model deployments.

Each image is decoded and validated here, alone, before it can join a batch: a bad image is
answered with its own 4xx and never reaches (or fails) a model batch. With ``decode.on_device``
only a JPEG's header is checked here (``twinfer_decode_seconds`` then times that check); a JPEG
that no decoder can read comes back from the model as its own ``TwinferError``, answered the same way.

Every answer is JSON (but the web page's files, ``deployments/page.py``): a model call that
cannot finish (its replica died, none is reachable) is retried within the call's deadline and
otherwise answered 503 ``unavailable``; anything unexpected is a 500 ``internal``, logged with its
traceback, never Serve's bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.admission import Admission
from deployments.config import IngressConfig
from deployments.http import check_bearer, error_response, image_bytes, load_api_keys
from deployments.metrics import NO_MODEL, UNKNOWN_MODEL, IngressMetrics
from deployments.openapi import build_openapi
from deployments.page import Site
from deployments.v2.protocol import OpenInferenceProtocol
from shared import ImageLoader, ModelConfig
from shared.errors import (
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    Overloaded,
    TwinferError,
    Unavailable,
    WrongTask,
)
from shared.tasks import TASKS

logger = logging.getLogger("ray.serve")

# What a handle call raises when its replica died mid-request (ActorDiedError) or could not be
# reached (ActorUnavailableError; both RayActorError), or Serve gave up on a chosen replica.
# Serve's router has already dropped a dead replica from its set, so a re-send goes elsewhere or
# waits for the replacement. Classification and detection are idempotent: re-sending is safe.
RETRYABLE = (RayActorError, ReplicaUnavailableError)
RETRY_BACKOFF_S = (0.05, 0.25)


class Ingress(OpenInferenceProtocol):  # + /v2/... and gRPC: the Open Inference Protocol (deployments/v2)
    def __init__(self, models: dict[str, DeploymentHandle], model_configs: dict[str, dict], ingress: dict):
        self.handles = models
        self.loaders = {name: ImageLoader(ModelConfig.model_validate(cfg)) for name, cfg in model_configs.items()}
        self.settings = IngressConfig.model_validate(ingress)
        self.api_keys = load_api_keys(self.settings)  # refuses to start when a configured source has no key
        self.pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        self.admission = Admission(self.settings.max_inflight_images)
        self.metrics = IngressMetrics()
        self.site = Site(build_openapi(self.settings))  # GET /, its files, /openapi.json: open, like /healthz
        if self.settings.api_keys_enabled:
            logger.info(
                "API keys on: %d key(s); every route but /healthz, the page and /openapi.json "
                "needs 'Authorization: Bearer'",
                len(self.api_keys),
            )

    async def __call__(self, request: Request) -> Response:
        model_tag = NO_MODEL
        try:
            parts = _route_parts(request)
            if parts == ["healthz"]:
                return await self._healthz(request)
            if parts[:1] == ["v2"]:  # answers every error itself, in the protocol's format
                return await self.v2_http(request, parts[1:])
            asset = self.site.get(parts)
            if asset is not None:
                _require(request, "GET")
                return self.site.answer(request, asset)
            if self.settings.api_keys_enabled:
                check_bearer(request, self.api_keys)
            if parts[:2] == ["v1", "models"] and len(parts) == 2:
                _require(request, "GET")
                return await self._list_models()
            if parts[:2] == ["v1", "models"] and len(parts) == 4 and parts[3] in TASKS:
                model = parts[2]
                model_tag = model if model in self.handles else UNKNOWN_MODEL
                _require(request, "POST")
                return await self._infer(request, model, parts[3])
            raise NotFound(f"no route {request.method} {request.url.path}")
        except TwinferError as error:
            return self._error(error, model_tag)
        except BackPressureError as exc:
            return self._error(Overloaded(f"model {model_tag!r} is at capacity, retry later ({exc})"), model_tag)
        except Exception:
            logger.exception("unexpected error answering %s %s", request.method, request.url.path)
            error = TwinferError("internal error; it is logged on the server under this response's x-request-id")
            return self._error(error, model_tag)

    def _error(self, error: TwinferError, model_tag: str) -> Response:
        self.metrics.errors.inc(tags={"model": model_tag, "code": error.code})
        return error_response(error)

    async def _call(self, model: str, method: str, *args):
        """``handles[model].<method>(*args)``, re-sent at most ``model_call_retries`` times when its
        replica died or was unreachable; ``Unavailable`` once the deadline has passed (the pending
        call is then cancelled, wherever it is: queued in the router or running on a replica)."""
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.model_call_timeout_s
        deadline = loop.time() + timeout_s
        attempt = 0
        while True:
            response = getattr(self.handles[model], method).remote(*args)
            waiter = asyncio.ensure_future(_awaited(response))
            waiter.add_done_callback(_retrieve)
            try:
                done, _ = await asyncio.wait({waiter}, timeout=max(deadline - loop.time(), 0.0))
            except asyncio.CancelledError:  # the client went away: so does the model call
                waiter.cancel()
                response.cancel()
                raise
            if not done:
                waiter.cancel()
                response.cancel()
                raise Unavailable(
                    f"model {model!r} did not answer within {timeout_s:g} s ({attempt + 1} attempt(s)); retry later"
                )
            try:
                return waiter.result()
            except DeploymentUnavailableError:
                raise Unavailable(f"model {model!r} failed to deploy") from None
            except RETRYABLE as exc:
                reason = type(exc).__name__
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                if attempt >= self.settings.model_call_retries or loop.time() + backoff >= deadline:
                    raise Unavailable(
                        f"model {model!r} is unavailable ({reason}, {attempt + 1} attempt(s)); retry later"
                    ) from None
                attempt += 1
                logger.warning("model %r: %s from the replica; re-sending (retry %d)", model, reason, attempt)
                self.metrics.retries.inc(tags={"model": model, "reason": reason})
                await asyncio.sleep(backoff)

    async def _infer(self, request: Request, model: str, route: str) -> Response:
        loader = self.loaders.get(model)
        if loader is None:
            raise ModelNotFound(f"model {model!r} is not served here; served: {', '.join(self.loaders)}")
        task = loader.task
        if task.name != route:
            raise WrongTask(f"model {model!r} serves {task.name}, not {route}; use /v1/models/{model}/{task.name}")
        params = task.params(request.query_params)
        data = await image_bytes(request, self.settings.max_body_bytes)

        with self.admission.admit(1):
            started = time.perf_counter()
            item = await asyncio.get_running_loop().run_in_executor(self.pool, loader.load, data)
            self.metrics.decode_seconds.observe(time.perf_counter() - started, tags={"model": model})
            result = await self._call(model, "infer", item, params)
        if isinstance(result, TwinferError):  # a JPEG left for the device decoder that no decoder could read
            raise result
        return JSONResponse(task.response(model, result))

    async def _list_models(self) -> Response:
        described = await asyncio.gather(*(self._call(name, "describe") for name in self.handles))
        return JSONResponse({"models": list(described)})

    async def _healthz(self, request: Request) -> Response:
        """200 once every deployment of this application reports HEALTHY (all replicas up)."""
        _require(request, "GET")
        app = serve.get_replica_context().app_name
        status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
        deployments = status.applications[app].deployments
        states = {
            name: str(d.status.value if hasattr(d.status, "value") else d.status) for name, d in deployments.items()
        }
        healthy = all(state == "HEALTHY" for state in states.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "deployments": states}, status_code=200 if healthy else 503
        )


async def _awaited(response):
    return await response


def _retrieve(task: asyncio.Future) -> None:
    """Mark a model call's outcome as seen: one given up on (cancelled, or its exception superseded
    by Unavailable) must not be logged as 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


def _route_parts(request: Request) -> list[str]:
    """Path segments below the application's route prefix."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return [part for part in path.split("/") if part]


def _require(request: Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.url.path} takes {method}, not {request.method}")
