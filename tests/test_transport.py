"""The gRPC transports' message limits: the shipped configs give Serve's proxies the body cap's
limit, and every replica of the application gets limits its largest call fits (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.app import build
from deployments.config import AppArgs
from deployments.transport import (
    CLIENT_LIMIT_ENV,
    HANDLE_LIMIT_ENV,
    PICKLE_ROOM,
    grpc_message_limit,
    handle_message_limit,
    item_bytes,
)
from shared import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["serve_config.yaml", "serve_config.gpu.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_shipped_configs_give_the_proxies_the_body_caps_limit(name):
    config = yaml.safe_load((ROOT / name).read_text())
    limit = int(config["controller_options"]["runtime_env"]["env_vars"][CLIENT_LIMIT_ENV])
    (app,) = config["applications"]
    assert limit == grpc_message_limit(AppArgs.model_validate(app["args"]).ingress.max_body_bytes)


def test_a_detectors_window_does_not_fit_serves_default_handle_limit_and_the_app_raises_it():
    detector = ModelConfig(name="fasterrcnn_v2", weights="random")
    assert item_bytes(detector) == 3 * 1333 * 1333 > 4 * 2**20  # one image over gRPC's 4 MiB default
    assert handle_message_limit([(detector, 2)]) == 2 * 3 * 1333 * 1333 + PICKLE_ROOM
    on_device = ModelConfig(device="cuda", decode={"on_device": True})
    assert item_bytes(on_device) == on_device.decode.max_bytes  # an encoded JPEG, up to the byte cap


def test_every_replica_gets_the_limits():
    args = AppArgs.model_validate(
        {
            "models": [
                {"model": {"name": "efficientnet_lite0"}},
                {
                    "model": {"name": "fasterrcnn_v2", "weights": "random"},
                    "batching": {"max_batch_size": 2, "max_concurrent_batches": 2},
                    "max_ongoing_requests": 8,
                },
            ]
        }
    )
    app = build(args)
    ingress = app._bound_deployment
    handles = ingress.init_args[0]
    expected = {
        CLIENT_LIMIT_ENV: str(grpc_message_limit(args.ingress.max_body_bytes)),
        HANDLE_LIMIT_ENV: str(handle_message_limit([(ModelConfig(name="fasterrcnn_v2", weights="random"), 4)])),
    }
    assert ingress.ray_actor_options["runtime_env"]["env_vars"] == expected
    for handle in handles.values():
        assert handle._bound_deployment.ray_actor_options["runtime_env"]["env_vars"] == expected
