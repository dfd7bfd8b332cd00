"""The Open Inference Protocol (KServe "v2") over the inference service, whatever the transport:
server and model metadata, readiness, Triton's model configuration, and inference. HTTP
(``rest``) and gRPC (``grpc_service``) parse their wire format into these calls and serialise
what they return; neither knows anything else.

A request's N images go through ``InferenceService.infer`` (admission for the whole request,
each image decoded alone, windows of model calls that join the same ``@serve.batch`` queues as
``/v1``); each task's ``Outputs`` turns the answers into output tensors. One bad image fails the
whole request, its error naming the image's index.
"""

from __future__ import annotations

import importlib.metadata

from deployments.config import model_deployment_name
from deployments.service import InferenceService, ServedModel
from deployments.v2.outputs import outputs_for
from deployments.v2.tensors import (
    EXTENSIONS,
    IMAGE_INPUT,
    MAX_IMAGES,
    PLATFORM,
    SERVER_NAME,
    VERSION,
    InferRequest,
    OutputTensor,
)
from shared.errors import ModelNotFound

# Triton's model configuration names its datatypes TYPE_<...>; BYTES is TYPE_STRING
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32"}


def server_version() -> str:
    try:
        return importlib.metadata.version("twinfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OpenInference:
    def __init__(self, service: InferenceService):
        self.service = service

    def model(self, name: str, version: str | None) -> ServedModel:
        served = self.service.model(name)
        if version not in (None, "", VERSION):
            raise ModelNotFound(f"model {name!r} has no version {version!r}; its one version is {VERSION!r}")
        return served

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    async def server_ready(self) -> bool:
        """Every deployment of the application HEALTHY, as ``/healthz`` has it."""
        return await self.service.ready()

    async def model_ready(self, name: str, version: str | None) -> bool:
        self.model(name, version)
        return await self.service.ready(model_deployment_name(name))

    async def model_metadata(self, name: str, version: str | None) -> dict:
        """Shapes and widths from the task and the model replica's ``describe()`` (labels, dim)."""
        served = self.model(name, version)
        described = await self.service.describe(name)
        outputs = outputs_for(served.task).describe(described)
        return {
            "name": name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in outputs.items()],
        }

    async def model_config(self, name: str, version: str | None) -> dict:
        """Triton's model configuration (``GET /v2/models/{m}/config``), the fields Triton's tools
        read before anything else. With ``max_batch_size`` > 0 Triton's dims leave out the batch
        dimension: the image input is then ``[N, 1]``, which the protocol takes too. A detector's
        outputs are ragged (one row per detection, not per image), so it says ``max_batch_size`` 0
        and gives whole shapes."""
        metadata = await self.model_metadata(name, version)
        batched = outputs_for(self.model(name, version).task).per_image
        strip = (lambda shape: shape[1:] or [1]) if batched else (lambda shape: shape)
        return {
            "name": name,
            "platform": PLATFORM,
            "backend": PLATFORM,
            "max_batch_size": MAX_IMAGES if batched else 0,
            "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1] if batched else [-1]}],
            "output": [
                {"name": o["name"], "data_type": CONFIG_TYPES[o["datatype"]], "dims": strip(o["shape"])}
                for o in metadata["outputs"]
            ],
            "version_policy": {"specific": {"versions": [int(VERSION)]}},
        }

    async def infer(self, name: str, version: str | None, request: InferRequest) -> list[OutputTensor]:
        served = self.model(name, version)
        outputs = outputs_for(served.task)
        params = served.task.params(request.parameters)
        requested = outputs.requested(request.outputs)
        answers = await self.service.infer(
            served, request.images, outputs.model_params(params, requested), indexed=True
        )
        return [OutputTensor.of(n, array) for n, array in outputs.tensors(answers, requested, params).items()]
