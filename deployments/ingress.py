"""HTTP ingress: routes, per-request decode off the event loop, fan-out to model deployments.

Each image is decoded and validated here, alone, before it can join a batch: a bad image is
answered with its own 4xx and never reaches (or fails) a model batch. With ``decode.on_device``
only a JPEG's header is checked here (``twinfer_decode_seconds`` then times that check); a JPEG
that no decoder can read comes back from the model as its own ``TwinferError``, answered the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.config import IngressConfig
from deployments.http import error_response, image_bytes
from deployments.metrics import IngressMetrics
from shared import ImageLoader, ModelConfig
from shared.errors import MethodNotAllowed, ModelNotFound, NotFound, Overloaded, TwinferError, WrongTask
from shared.wrapper import DEFAULT_TOP_K, validate_score_threshold, validate_top_k

logger = logging.getLogger("ray.serve")

TASK_ROUTES = {"classify": "classify", "detect": "detect"}


class Ingress:
    def __init__(self, models: dict[str, DeploymentHandle], model_configs: dict[str, dict], ingress: dict):
        self.handles = models
        self.loaders = {name: ImageLoader(ModelConfig.model_validate(cfg)) for name, cfg in model_configs.items()}
        self.settings = IngressConfig.model_validate(ingress)
        self.pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        self.metrics = IngressMetrics()

    async def __call__(self, request: Request) -> Response:
        model = "-"
        try:
            parts = _route_parts(request)
            if parts == ["healthz"]:
                return await self._healthz(request)
            if parts[:2] == ["v1", "models"] and len(parts) == 2:
                _require(request, "GET")
                return await self._list_models()
            if parts[:2] == ["v1", "models"] and len(parts) == 4 and parts[3] in TASK_ROUTES:
                _require(request, "POST")
                model = parts[2]
                return await self._infer(request, model, parts[3])
            raise NotFound(f"no route {request.method} {request.url.path}")
        except TwinferError as error:
            self.metrics.errors.inc(tags={"model": model, "code": error.code})
            return error_response(error)
        except BackPressureError as exc:
            error = Overloaded(f"model {model!r} is at capacity, retry later ({exc})")
            self.metrics.errors.inc(tags={"model": model, "code": error.code})
            return error_response(error)

    async def _infer(self, request: Request, model: str, task: str) -> Response:
        loader = self.loaders.get(model)
        if loader is None:
            raise ModelNotFound(f"model {model!r} is not served here; served: {', '.join(self.loaders)}")
        if loader.spec.task != task:
            raise WrongTask(f"model {model!r} does {loader.spec.task}, not {task}; use /v1/models/{model}/{loader.spec.task}")
        if task == "classify":
            params = {"top_k": validate_top_k(request.query_params.get("top_k", DEFAULT_TOP_K))}
        else:
            default = loader.config.score_threshold
            params = {"score_threshold": validate_score_threshold(request.query_params.get("score_threshold", default))}
        data = await image_bytes(request, self.settings.max_body_bytes)

        started = time.perf_counter()
        item = await asyncio.get_running_loop().run_in_executor(self.pool, loader.load, data)
        self.metrics.decode_seconds.observe(time.perf_counter() - started, tags={"model": model})

        result = await self.handles[model].infer.remote(item, params)
        if isinstance(result, TwinferError):  # a JPEG left for the device decoder that no decoder could read
            raise result
        key = "predictions" if task == "classify" else "detections"
        return JSONResponse({"model": model, key: result})

    async def _list_models(self) -> Response:
        described = await asyncio.gather(*(handle.describe.remote() for handle in self.handles.values()))
        return JSONResponse({"models": list(described)})

    async def _healthz(self, request: Request) -> Response:
        """200 once every deployment of this application reports HEALTHY (all replicas up)."""
        _require(request, "GET")
        app = serve.get_replica_context().app_name
        status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
        deployments = status.applications[app].deployments
        states = {name: str(d.status.value if hasattr(d.status, "value") else d.status) for name, d in deployments.items()}
        healthy = all(state == "HEALTHY" for state in states.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "deployments": states}, status_code=200 if healthy else 503)


def _route_parts(request: Request) -> list[str]:
    """Path segments below the application's route prefix."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return [part for part in path.split("/") if part]


def _require(request: Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.url.path} takes {method}, not {request.method}")
