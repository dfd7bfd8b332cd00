"""What the Serve tests share."""

# Tests of answers (right labels, one bad image failing alone, retries when a replica dies) run
# several requests at once on a small, shared machine: the ingress's wait budget could then refuse
# some of them with 503 overloaded, as it should under load. They turn it off; the budget itself is
# tested in tests/test_admission.py and tests/test_serve_reliability.py.
ANSWERS_NOT_ADMISSION = {"max_queue_wait_s": None}
