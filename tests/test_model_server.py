"""ModelServer's batching settings change at run time through reconfigure (user_config)."""


import pytest
from pydantic import ValidationError

from deployments.config import AppArgs, ModelDeploymentConfig
from deployments.model_server import ModelServer
from tests.images import small_jpeg


@pytest.fixture(scope="module")
def server():
    return ModelServer({"name": "efficientnet_lite0", "weights": "random"})


def test_reconfigure_changes_batch_settings_in_place(server):
    queue_before = server._batched
    server.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.05, "max_concurrent_batches": 1})
    server.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.01, "max_concurrent_batches": 1})
    assert server.batching.max_batch_size == 16 and server.batching.batch_wait_timeout_s == 0.01
    assert server._batched is not queue_before  # concurrency changed once: new queue


def test_reconfigure_rejects_bad_settings(server):
    with pytest.raises(ValidationError):
        server.reconfigure({"max_batch_size": 0})


def test_run_batch_is_the_wrappers_predict_batch(server):
    items = [server.wrapper.load(small_jpeg(n)) for n in ("coffee", "rocket")]
    results = server.run_batch(items, [{"top_k": 2}, {"top_k": 3}])
    assert [len(r) for r in results] == [2, 3]
    assert results == server.wrapper.predict_batch(items, [{"top_k": 2}, {"top_k": 3}])
    assert server.batch_sizes[2] >= 1


def test_batches_that_cannot_fill_are_refused_at_start_up():
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        ModelDeploymentConfig(max_ongoing_requests=8, batching={"max_batch_size": 8, "max_concurrent_batches": 2})
    with pytest.raises(ValidationError, match="no model is enabled"):
        AppArgs(models=[{"enabled": False}])
    with pytest.raises(ValidationError, match="twice"):
        AppArgs(models=[{}, {}])


