"""The inference service every protocol calls: admission -> decode pool -> retried model call ->
typed errors -> metrics.

A protocol adapter (``deployments/v1.py``, ``deployments/v2/rest.py``, ``deployments/v2/grpc_service.py``)
knows only its wire format: it reads a request within the service's byte budget, parses it off the
event loop (``offload``), asks ``infer`` for the answers and writes them back. Whatever fails reaches
it as a ``TwinferError`` from ``error``, which also counts it.

Each image is decoded and validated in the decode pool, alone, before it can join a batch: a bad
image is answered with its own 4xx and never reaches (or fails) a model batch. With
``decode.on_device`` only a JPEG's header is checked here (``twinfer_decode_seconds`` then times
that check); a JPEG no decoder can read comes back from the model as its own ``TwinferError``
(``shared.device_decode``).

A request's images run a window at a time: a window is what one model replica works on at once
(``max_batch_size`` x ``max_concurrent_batches``), sent as one model call whose images join the
replica's ``@serve.batch`` queue one by one. Windows run side by side up to the ingress's image
budget, so a request of hundreds of images holds at most that many decoded at once, and a model
call's message stays one window's size (the handle's transport limit, ``deployments/transport.py``).

A model call whose replica died or could not be reached is re-sent within the call's deadline;
past it the answer is 503 ``unavailable``. Anything unexpected is a 500 ``internal``, logged with
its traceback, never Serve's bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.requests import ClientDisconnect

from deployments.admission import Admission, Ticket
from deployments.config import IngressConfig
from deployments.http import check_bearer, load_api_keys
from deployments.metrics import NO_MODEL, UNKNOWN_MODEL, IngressMetrics
from shared import ImageLoader, ModelConfig
from shared.errors import ClientDisconnected, ModelNotFound, Overloaded, TwinferError, Unavailable, for_image
from shared.tasks import Task

logger = logging.getLogger("ray.serve")

# What a handle call raises when its replica died mid-request (ActorDiedError) or could not be
# reached (ActorUnavailableError; both RayActorError), or Serve gave up on a chosen replica.
# Serve's router has already dropped a dead replica from its set, so a re-send goes elsewhere or
# waits for the replacement. Classification, detection and embedding are idempotent: re-sending is safe.
RETRYABLE = (RayActorError, ReplicaUnavailableError)
RETRY_BACKOFF_S = (0.05, 0.25)
STATUS_TTL_S = 1.0  # how long one serve.status() answers every health and readiness check
# deployment states whose replicas answer: a deployment the autoscaler is resizing still serves
SERVING_STATES = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING"})


@dataclass(frozen=True)
class ServedModel:
    """A model this ingress serves: the name clients use, its CPU half, and its window size."""

    name: str
    loader: ImageLoader
    images_per_call: int = 1

    @property
    def task(self) -> Task:
        return self.loader.task


class InferenceService:
    def __init__(
        self,
        handles: dict[str, Any],
        models: dict[str, dict],
        settings: IngressConfig,
        *,
        metrics: IngressMetrics | None = None,
        deployment_states: Callable[[], dict[str, str]] | None = None,
    ):
        """``models``: served name -> ``{"model": ModelConfig dict, "images_per_call": n}``.
        ``deployment_states``: this application's deployments and their states (Serve's, by default)."""
        self.settings = settings
        self.handles = handles
        self.models = {
            name: ServedModel(name, ImageLoader(ModelConfig.model_validate(m["model"])), m.get("images_per_call", 1))
            for name, m in models.items()
        }
        self.api_keys = load_api_keys(settings)  # refuses to start when a configured source has no key
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.admission = Admission(settings.max_inflight_images, settings.max_inflight_bytes, settings.max_queue_wait_s)
        self.metrics = metrics or IngressMetrics()
        self._states = StatusCache(deployment_states or serve_deployment_states)

    # ---- lookups ---------------------------------------------------------------------------------
    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served here; served: {', '.join(self.models)}")
        return served

    def model_tag(self, name: str | None) -> str:
        """The metrics tag for a name a request gave: a bounded set of values, never free text."""
        return NO_MODEL if name is None else name if name in self.models else UNKNOWN_MODEL

    def authorize(self, authorization: str | None) -> None:
        """``Unauthorized`` unless API keys are off or ``authorization`` is ``Bearer <a key>``."""
        if self.settings.api_keys_enabled:
            check_bearer(authorization or "", self.api_keys)

    def authorized(self, authorization: str | None) -> bool:
        try:
            self.authorize(authorization)
        except TwinferError:
            return False
        return True

    # ---- work off the event loop ------------------------------------------------------------------
    async def offload(self, fn: Callable, *args) -> Any:
        """``fn(*args)`` in the decode pool: parsing and inflating request bodies happen there, never
        on the event loop that answers every other request (health checks included)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- inference -------------------------------------------------------------------------------
    async def infer(self, served: ServedModel, images: Sequence[bytes], params: dict, *, indexed: bool) -> list:
        """The model's answer for each image, in order. Admission is decided here, for the whole
        request, before any image is decoded. ``indexed``: errors name the image's index (a
        protocol that sends several images per request)."""
        cap = self.settings.max_inflight_images
        window = min(max(1, served.images_per_call), cap)
        held = min(len(images), cap)
        with self.admission.admit(held) as ticket:
            lanes = asyncio.Semaphore(max(1, held // window))
            starts = range(0, len(images), window)
            runs = [self._window(served, images, start, window, params, indexed, lanes, ticket) for start in starts]
            answers = await _all_or_none(runs)
        return [answer for window_answers in answers for answer in window_answers]

    async def _window(
        self,
        served: ServedModel,
        images: Sequence[bytes],
        start: int,
        size: int,
        params: dict,
        indexed: bool,
        lanes: asyncio.Semaphore,
        ticket: Ticket,
    ) -> list:
        async with lanes:
            chunk = images[start : start + size]
            items = await self._load(served, chunk, start, indexed)
            answers = await self._call(served.name, "infer", items, params)
        for index, answer in enumerate(answers, start):
            if isinstance(answer, TwinferError):  # a JPEG left for the device decoder that no decoder could read
                raise for_image(answer, index) if indexed else answer
        ticket.answered(len(answers))
        return answers

    async def _load(self, served: ServedModel, images: Sequence[bytes], start: int, indexed: bool) -> list:
        """Each image decoded and checked on its own, in the decode pool; the first bad one (by
        index) fails the request. All are waited for: a decode thread cannot be stopped."""
        loop = asyncio.get_running_loop()

        async def load(data: bytes):
            started = time.perf_counter()
            item = await loop.run_in_executor(self.pool, served.loader.load, data)
            self.metrics.decode_seconds.observe(time.perf_counter() - started, tags={"model": served.name})
            return item

        loaded = await asyncio.gather(*(load(data) for data in images), return_exceptions=True)
        for index, item in enumerate(loaded, start):
            if isinstance(item, TwinferError):
                raise (for_image(item, index) if indexed else item) from None
            if isinstance(item, BaseException):
                raise item
        return loaded

    async def describe(self, name: str) -> dict:
        """The model replica's ``describe()``: task, labels, dim, device, batching..."""
        return await self._call(self.model(name).name, "describe")

    async def describe_all(self) -> list[dict]:
        return list(await asyncio.gather(*(self._call(name, "describe") for name in self.models)))

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

    # ---- health ------------------------------------------------------------------------------------
    async def deployment_states(self) -> dict[str, str]:
        """This application's deployments and their states, at most ``STATUS_TTL_S`` old."""
        return await self._states.get()

    async def ready(self, deployment: str | None = None) -> bool:
        """Every deployment serving (``SERVING_STATES``: healthy, or healthy and being resized by the
        autoscaler), or just ``deployment``."""
        states = await self.deployment_states()
        if deployment is not None:
            return states.get(deployment) in SERVING_STATES
        return bool(states) and all(state in SERVING_STATES for state in states.values())

    # ---- errors -------------------------------------------------------------------------------------
    def error(self, exc: BaseException, model_tag: str, where: str) -> TwinferError:
        """Any failure as the documented error, counted by model and code; unexpected ones are
        logged with their traceback under ``internal``."""
        if isinstance(exc, BackPressureError):
            exc = Overloaded(f"model {model_tag!r} is at capacity, retry later ({exc})")
        elif isinstance(exc, ClientDisconnect):
            exc = ClientDisconnected("the client closed the connection before the request was read")
        elif not isinstance(exc, TwinferError):
            logger.error("unexpected error answering %s", where, exc_info=exc)
            exc = TwinferError("internal error; it is logged on the server under this request's id")
        if isinstance(exc, ClientDisconnected):
            logger.info("%s: %s", where, exc)
        self.metrics.errors.inc(tags={"model": model_tag, "code": exc.code})
        return exc


class StatusCache:
    """One ``fetch`` (a call to Serve's controller) per ``ttl_s``, however many callers ask: a
    flood of health checks costs the controller nothing more. Concurrent callers share one fetch."""

    def __init__(self, fetch: Callable[[], dict[str, str]], ttl_s: float = STATUS_TTL_S):
        self.fetch = fetch
        self.ttl_s = ttl_s
        self._value: dict[str, str] | None = None
        self._at = float("-inf")
        self._lock: asyncio.Lock | None = None

    async def get(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._value is None or loop.time() - self._at >= self.ttl_s:
                self._value = await loop.run_in_executor(None, self.fetch)
                self._at = loop.time()
            return self._value


def serve_deployment_states() -> dict[str, str]:
    from ray import serve

    app = serve.get_replica_context().app_name
    deployments = serve.status().applications[app].deployments
    return {name: str(d.status.value if hasattr(d.status, "value") else d.status) for name, d in deployments.items()}


async def _all_or_none(runs: Sequence[Awaitable]) -> list:
    """Every run's result in order; on the first failure the others are cancelled and it is raised."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    for task in tasks:
        task.add_done_callback(_retrieve)
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _awaited(response):
    return await response


def _retrieve(task: asyncio.Future) -> None:
    """Mark an outcome as seen: one given up on (cancelled, or its exception superseded) must not
    be logged as 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
