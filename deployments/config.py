"""Typed application args for ``serve run serve_config.yaml`` (validated by Serve via the builder's
annotation). The model part is ``shared.config.ModelConfig``: the same vocabulary as backfills."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from ray.serve.config import AutoscalingConfig

from shared import auto
from shared.config import ModelConfig, StrictModel, check_gpu_request
from shared.decode import DEFAULT_MAX_BYTES
from shared.devices import planned_device_type


class BatchingConfig(StrictModel):
    """``@serve.batch`` settings; also the deployment's ``user_config`` (changeable at run time)."""

    max_batch_size: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto", description="auto = small on a CPU, large on a GPU (shared/auto.py)"
    )

    def resolved(self, model: ModelConfig, device_type: str) -> "BatchingConfig":
        """This batching with ``max_batch_size: auto`` settled for ``model`` on ``device_type``."""
        settled = auto.settle(model, device_type, auto.Workload(online=True, batch_size=self.max_batch_size))
        return self.model_copy(update={"max_batch_size": settled.batch_size})

    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0)
    max_concurrent_batches: int = Field(2, ge=1, le=16)


class Autoscaling(AutoscalingConfig):
    """Serve's own ``autoscaling_config`` (its fields, defaults and checks), with unknown keys
    refused: a typo fails the deploy instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class Replicas(StrictModel):
    """How many replicas a deployment runs: a fixed count, or Serve's autoscaler between bounds."""

    num_replicas: int | None = Field(None, ge=1, description="a fixed replica count; 1 when neither is set")
    autoscaling_config: Autoscaling | None = Field(
        None,
        description="Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, "
        "upscale_delay_s, downscale_delay_s, ...): replicas follow the requests each one has in progress "
        "and queued; exclusive with num_replicas",
    )

    @model_validator(mode="after")
    def _one_way(self) -> "Replicas":
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both (autoscaling sets the count)")
        if self.autoscaling_config is not None:
            target = self.autoscaling_config.target_ongoing_requests
            if target is not None and target > self.max_ongoing_requests:
                raise ValueError(
                    f"autoscaling_config.target_ongoing_requests ({target:g}) is over max_ongoing_requests "
                    f"({self.max_ongoing_requests}): a replica can never hold the target, so it would scale to "
                    "max_replicas at the first load"
                )
        return self

    @property
    def most_replicas(self) -> int:
        """The largest number of replicas this deployment may run (what the cluster must hold)."""
        return self.autoscaling_config.max_replicas if self.autoscaling_config else self.num_replicas or 1

    def replica_options(self) -> dict:
        """Serve's deployment options for the replica count."""
        if self.autoscaling_config is not None:
            return {"autoscaling_config": self.autoscaling_config.model_dump(exclude_unset=True)}
        return {"num_replicas": self.num_replicas or 1}


SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"  # one URL path segment


def model_deployment_name(model: str) -> str:
    """The Serve deployment that serves the model clients call ``model``."""
    return f"model-{model}"


class ModelDeploymentConfig(Replicas):
    name: str | None = Field(
        None,
        description="what clients call it: /v1/models/{name}/...; default the model's name, when that is one "
        "path segment (an hf: directory is not)",
    )
    model: ModelConfig = ModelConfig()
    enabled: bool = True
    batching: BatchingConfig = BatchingConfig()
    num_gpus: float = Field(0.0, ge=0.0, description="per replica; 0 on a CPU-only machine")
    num_cpus: float = Field(1.0, ge=0.0)
    resources: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=dict,
        description='custom Ray resources per replica, e.g. {"worker": 1}: only nodes '
        "started with them (ray start --resources) run this model",
    )
    max_ongoing_requests: int = Field(128, ge=1)
    max_queued_requests: int = Field(256, ge=-1, description="beyond this, callers get 503 at once; -1 = no limit")

    @property
    def served_name(self) -> str:
        return self.name or self.model.name

    @property
    def images_per_call(self) -> int:
        """Images the ingress sends the model in one call: what a replica runs at once."""
        batching = self.resolved_batching
        return batching.max_batch_size * batching.max_concurrent_batches

    @property
    def resolved_batching(self) -> BatchingConfig:
        """``batching`` with ``auto`` settled for the device the replicas will run on (from the reservation)."""
        return self.batching.resolved(self.model, planned_device_type(self.model.device, self.num_gpus))

    @model_validator(mode="after")
    def _consistent(self) -> "ModelDeploymentConfig":
        if not re.match(SERVED_NAME, self.served_name):
            raise ValueError(
                f"{self.served_name!r} cannot be one URL path segment: give this entry a name "
                "(letters, digits, '_', '.', ':', '-'), e.g. name: my-model"
            )
        check_batches_can_fill(self.resolved_batching, self.max_ongoing_requests)
        target = self.autoscaling_config.target_ongoing_requests if self.autoscaling_config else None
        if target is not None and target < self.resolved_batching.max_batch_size:
            raise ValueError(
                f"autoscaling_config.target_ongoing_requests ({target:g}) is under max_batch_size "
                f"({self.resolved_batching.max_batch_size}): replicas would be added before one fills a batch"
            )
        check_gpu_request(self.model, self.num_gpus)
        if {"CPU", "GPU"} & set(self.resources):
            raise ValueError("resources is for custom resources: use num_cpus / num_gpus for CPU and GPU")
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or positive (Serve refuses 0)")
        return self


def check_batches_can_fill(batching: BatchingConfig, max_ongoing_requests: int) -> None:
    needed = batching.max_batch_size * batching.max_concurrent_batches
    if max_ongoing_requests < needed:
        raise ValueError(
            f"max_ongoing_requests ({max_ongoing_requests}) must be >= max_batch_size x "
            f"max_concurrent_batches ({needed}), or batches can never fill (ray#43288)"
        )


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class IngressConfig(Replicas):
    num_cpus: float = Field(1.0, ge=0.0)
    decode_threads: int = Field(4, ge=1, le=64, description="per ingress replica, off the event loop")
    max_ongoing_requests: int = Field(512, ge=1)
    max_queued_requests: int = Field(1024, ge=0)
    max_inflight_images: int = Field(
        64,
        ge=1,
        description="images one ingress replica works on at once (decoding or awaiting the model); a request "
        "beyond it gets 503 overloaded before its images are decoded (deployments/admission.py says why). "
        "Size it to what the replica's models answer well within the proxy's request_timeout_s",
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="larger bodies get 413")
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="request body bytes one ingress replica holds at once (read, being read or inflated), "
        "reserved from a body's declared length before it is read; beyond it a request gets 503 overloaded. "
        "At least max_body_bytes",
    )
    max_queue_wait_s: float | None = Field(
        1.0,
        gt=0.0,
        description="a request that would wait longer than this for the images already in progress, at the "
        "rate this ingress replica has been answering them, gets 503 overloaded at once (None: no wait budget)",
    )
    model_call_timeout_s: float = Field(
        20.0,
        gt=0.0,
        le=600.0,
        description="deadline of one request's model call, retries included; past it the client gets 503 "
        "unavailable. Keep it below http_options.request_timeout_s, or the proxy answers 408 first",
    )
    model_call_retries: int = Field(
        2,
        ge=0,
        le=2,
        description="re-sends, within the deadline, of a call whose model replica died or was unreachable",
    )
    api_keys_env: str | None = Field(
        None,
        pattern=ENV_NAME,
        description="name of an environment variable (of the ingress replicas) holding comma-separated API keys",
    )
    api_keys_file: str | None = Field(
        None,
        min_length=1,
        description="path (on the ingress replicas' nodes) of a file with one API key per line",
    )

    @property
    def api_keys_enabled(self) -> bool:
        return self.api_keys_env is not None or self.api_keys_file is not None

    @model_validator(mode="after")
    def _budgets(self) -> "IngressConfig":
        if self.max_inflight_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}), or one full body could never be read"
            )
        return self


class AppArgs(StrictModel):
    models: list[ModelDeploymentConfig] = Field(default_factory=lambda: [ModelDeploymentConfig()])
    ingress: IngressConfig = IngressConfig()

    @model_validator(mode="after")
    def _some_unique_models(self) -> "AppArgs":
        names = [m.served_name for m in self.enabled_models]
        if not names:
            raise ValueError("no model is enabled")
        if len(names) != len(set(names)):
            raise ValueError(
                f"a name is served twice: {names}; give one entry another name (e.g. to serve a model as embed too)"
            )
        return self

    @property
    def enabled_models(self) -> list[ModelDeploymentConfig]:
        return [m for m in self.models if m.enabled]
