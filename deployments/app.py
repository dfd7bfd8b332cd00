"""Application builder for ``serve run serve_config.yaml`` (import path ``deployments.app:build_app``).

One ``ModelServer`` deployment per enabled model, behind one HTTP ``Ingress`` deployment.
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from deployments.config import AppArgs
from deployments.ingress import Ingress
from deployments.model_server import ModelServer


def build_app(args: AppArgs) -> Application:
    return build(AppArgs.model_validate(args))


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def build(
    args: AppArgs,
    model_server_cls: type = ModelServer,
    ingress_cls: type = Ingress,
    ingress_runtime_env: dict | None = None,
) -> Application:
    """The app; tests swap ``model_server_cls`` for one held by a signal, and give the ingress
    environment variables through ``ingress_runtime_env``."""
    handles, configs = {}, {}
    for entry in args.enabled_models:
        name = entry.served_name
        deployment = serve.deployment(model_server_cls).options(
            name=model_deployment_name(name),
            num_replicas=entry.num_replicas,
            max_ongoing_requests=entry.max_ongoing_requests,
            max_queued_requests=entry.max_queued_requests,
            ray_actor_options={
                "num_cpus": entry.num_cpus,
                "num_gpus": entry.num_gpus,
                "resources": dict(entry.resources),
            },
            user_config=entry.resolved_batching.model_dump(),
        )
        handles[name] = deployment.bind(entry.model.model_dump(), entry.max_ongoing_requests, name)
        configs[name] = entry.model.model_dump()
    ingress_actor_options = {"num_cpus": args.ingress.num_cpus}
    if ingress_runtime_env:
        ingress_actor_options["runtime_env"] = ingress_runtime_env
    ingress = serve.deployment(ingress_cls).options(
        name="ingress",
        num_replicas=args.ingress.num_replicas,
        max_ongoing_requests=args.ingress.max_ongoing_requests,
        max_queued_requests=args.ingress.max_queued_requests,
        ray_actor_options=ingress_actor_options,
    )
    return ingress.bind(handles, configs, args.ingress.model_dump())
