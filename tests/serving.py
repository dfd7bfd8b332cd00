"""What the Serve tests share."""

from __future__ import annotations

# Tests of answers (right labels, one bad image failing alone, retries when a replica dies) run
# several requests at once on a small, shared machine: the ingress's wait budget could then refuse
# some of them with 503 overloaded, as it should under load. They turn it off; the budget itself is
# tested in tests/test_admission.py and tests/test_serve_reliability.py.
ANSWERS_NOT_ADMISSION = {"max_queue_wait_s": None}

# The app that tests/test_serve.py (/v1), tests/test_v2_serve.py (/v2, gRPC), tests/test_ui_browser.py
# (the page) and tests/test_dashboard.py (live metrics) all ask: one classifier with the embedded
# weights, the same model as an embedder, and a random-weight detector made small. Built once per
# test process, at the root, by the session fixture ``standard_app`` (tests/conftest.py);
# tests/scheduling.py hands those files to one worker. Each replica reserves a sliver of a CPU, so
# that the app holds no CPU that the process's later tests (backfills) reserve.
STANDARD_APP = "twinfer-test"
SLIVER = 0.05
BODY_CAP = 400_000  # 413 beyond
MAX_PIXELS = 1_000_000  # the classifier's decode cap: 413 beyond
SMALL_DETECTOR = {"min_size": 128, "max_size": 160}
# a generous model deadline: the machine is shared, and the detector is slow on it
STANDARD_INGRESS = {
    "max_body_bytes": BODY_CAP,
    "decode_threads": 2,
    "num_cpus": SLIVER,
    "model_call_timeout_s": 180,
    **ANSWERS_NOT_ADMISSION,
}


def standard_app_args(max_batch_size: int = 8, wait: float = 0.1):
    from deployments.config import AppArgs

    return AppArgs.model_validate(
        {
            "ingress": STANDARD_INGRESS,
            "models": [
                {
                    "model": {"name": "efficientnet_lite0", "decode": {"max_pixels": MAX_PIXELS}},
                    "num_cpus": SLIVER,
                    "max_ongoing_requests": 16,
                    "batching": {
                        "max_batch_size": max_batch_size,
                        "batch_wait_timeout_s": wait,
                        "max_concurrent_batches": 1,
                    },
                },
                {
                    "name": "lite0-embed",  # the same model served a second time, as an embedder
                    "model": {"name": "efficientnet_lite0", "task": "embed"},
                    "num_cpus": SLIVER,
                    "max_ongoing_requests": 8,
                    "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01, "max_concurrent_batches": 1},
                },
                {
                    "model": {"name": "fasterrcnn_v2", "weights": "random", "options": SMALL_DETECTOR},
                    "num_cpus": SLIVER,
                    "max_ongoing_requests": 4,
                    "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.01, "max_concurrent_batches": 1},
                },
            ],
        }
    )


def deploy_standard_app(**batching) -> None:
    from ray import serve

    from deployments.app import build

    serve.run(build(standard_app_args(**batching)), name=STANDARD_APP, route_prefix="/")
