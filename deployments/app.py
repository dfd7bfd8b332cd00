"""Application builder for ``serve run serve_config.yaml`` (import path ``deployments.app:build_app``).

One ``ModelServer`` deployment per enabled model, behind one ``Ingress`` deployment (HTTP and gRPC).
Every replica gets the gRPC message limits its transports need (``deployments/transport.py``).
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from deployments.config import AppArgs, model_deployment_name
from deployments.ingress import Ingress
from deployments.model_server import ModelServer
from deployments.transport import replica_env

__all__ = ["build", "build_app", "model_deployment_name"]


def build_app(args: AppArgs) -> Application:
    return build(AppArgs.model_validate(args))


def build(
    args: AppArgs,
    model_server_cls: type = ModelServer,
    ingress_cls: type = Ingress,
    ingress_runtime_env: dict | None = None,
) -> Application:
    """The app; tests swap ``model_server_cls`` for one held by a signal, and give the ingress
    environment variables through ``ingress_runtime_env``."""
    models = args.enabled_models
    env = replica_env(args.ingress.max_body_bytes, [(entry.model, entry.images_per_call) for entry in models])
    handles, served = {}, {}
    for entry in models:
        name = entry.served_name
        deployment = serve.deployment(model_server_cls).options(
            name=model_deployment_name(name),
            **entry.replica_options(),
            max_ongoing_requests=entry.max_ongoing_requests,
            max_queued_requests=entry.max_queued_requests,
            ray_actor_options={
                "num_cpus": entry.num_cpus,
                "num_gpus": entry.num_gpus,
                "resources": dict(entry.resources),
                "runtime_env": {"env_vars": env},
            },
            user_config=entry.resolved_batching.model_dump(),
        )
        handles[name] = deployment.bind(entry.model.model_dump(), entry.max_ongoing_requests, name)
        served[name] = {"model": entry.model.model_dump(), "images_per_call": entry.images_per_call}
    ingress_env = dict(ingress_runtime_env or {})
    ingress_env["env_vars"] = {**env, **ingress_env.get("env_vars", {})}
    ingress = serve.deployment(ingress_cls).options(
        name="ingress",
        **args.ingress.replica_options(),
        max_ongoing_requests=args.ingress.max_ongoing_requests,
        max_queued_requests=args.ingress.max_queued_requests,
        ray_actor_options={"num_cpus": args.ingress.num_cpus, "runtime_env": ingress_env},
    )
    return ingress.bind(handles, served, args.ingress.model_dump())
