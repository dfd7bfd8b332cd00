"""ModelServer's batching settings change at run time through reconfigure (user_config)."""

import pytest
from pydantic import ValidationError

from deployments.config import AppArgs, ModelDeploymentConfig
from deployments.model_server import ModelServer
from tests.images import small_jpeg


@pytest.fixture(scope="module")
def server():
    return ModelServer({"name": "efficientnet_lite0", "weights": "random"}, max_ongoing_requests=32)


def test_reconfigure_changes_the_live_batch_queue(server):
    queue_before = server._batched
    server.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.05, "max_concurrent_batches": 1})
    assert server._batched is not queue_before  # concurrency changed: a new queue
    queue = server._batched
    server.reconfigure({"max_batch_size": 16, "batch_wait_timeout_s": 0.01})
    assert server._batched is queue  # same concurrency: the setters, in place
    assert queue._get_max_batch_size() == 16 and queue._get_batch_wait_timeout_s() == 0.01
    server.reconfigure({"max_batch_size": 8})  # partial update keeps the rest
    assert server.batching.batch_wait_timeout_s == 0.01 and server.batching.max_concurrent_batches == 1


def test_reconfigure_keeps_the_start_up_invariant(server):
    with pytest.raises(ValueError, match="batches can never fill"):
        server.reconfigure({"max_batch_size": 64})  # 64 x 1 > max_ongoing_requests 32


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
    with pytest.raises(ValidationError, match="Serve refuses 0"):
        ModelDeploymentConfig(max_queued_requests=0)
    with pytest.raises(ValidationError, match="needs a GPU request"):
        ModelDeploymentConfig(model={"device": "cuda"}, num_gpus=0)
    with pytest.raises(ValidationError, match="model.device is 'cpu'"):
        ModelDeploymentConfig(model={"device": "cpu"}, num_gpus=1)


def test_reconfigure_prepares_every_batch_size_before_the_batcher_can_send_it(server):
    server.reconfigure({"max_batch_size": 8, "max_concurrent_batches": 1})
    assert {1, 2, 4, 8} <= set(server.wrapper.warmed_batch_sizes)
