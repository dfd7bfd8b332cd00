"""deploy/grafana/twinfer.json: an importable Grafana dashboard whose every query names a metric
that exists, read from a real Ray metrics endpoint, not from a list kept here.

twinfer's metrics are found in the code: every ``Counter``/``Histogram``/``Gauge`` declared under
deployments/ with a ``twinfer_`` name, so a metric added there is checked (and must be on the
dashboard) without touching this file. The names Prometheus sees follow Ray's exporter: the
``ray_`` namespace (``ray/dashboard/modules/reporter/reporter_agent.py``), ``_total`` on counters,
``_bucket``/``_sum``/``_count`` on histograms; the live test shows that rule holds for the metrics
it can make record, and that every Serve metric the dashboard names is exported.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import ray

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "twinfer.json"
METRIC = re.compile(r"\bray_[a-z0-9_]+")
KINDS = ("Counter", "Histogram", "Gauge")
FUNCTIONS = re.compile(r"\b(rate|irate|increase|sum|avg|max|min|histogram_quantile|label_values|by)\b")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict) -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
    return exprs


def named_metrics(board: dict) -> set[str]:
    return {name for expr in queries(board) for name in METRIC.findall(expr)}


def declared_metrics() -> dict[str, str]:
    """``twinfer_*`` metric name -> kind, from every metric constructor call under deployments/."""
    declared = {}
    for path in (ROOT / "deployments").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if kind in KINDS and isinstance(name, ast.Constant) and str(name.value).startswith("twinfer_"):
                declared[name.value] = kind
    return declared


def exported_names(name: str, kind: str) -> set[str]:
    """What Prometheus sees for a metric declared as ``name``."""
    name = "ray_" + name
    if kind == "Counter":
        return {name if name.endswith("_total") else name + "_total"}
    if kind == "Histogram":
        return {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {name}


def twinfer_exports() -> set[str]:
    return {n for name, kind in declared_metrics().items() for n in exported_names(name, kind)}


def test_the_dashboard_is_grafana_json_on_a_prometheus_datasource_variable():
    board = dashboard()
    assert board["uid"] == "twinfer" and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"] and panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert METRIC.search(expr), expr


def test_every_query_names_metrics_and_every_twinfer_metric_is_one_the_code_declares():
    declared = declared_metrics()
    assert {"twinfer_errors_total", "twinfer_decode_seconds", "twinfer_batch_size", "twinfer_model_seconds"} <= set(
        declared
    )
    named = named_metrics(dashboard())
    unknown = {n for n in named if n.startswith("ray_twinfer_")} - twinfer_exports()
    assert not unknown, f"the dashboard names twinfer metrics the code does not declare: {sorted(unknown)}"
    assert all(n.startswith(("ray_twinfer_", "ray_serve_")) for n in named), sorted(named)


def test_every_metric_twinfer_declares_is_on_the_dashboard():
    named = named_metrics(dashboard())
    missing = [name for name, kind in declared_metrics().items() if not exported_names(name, kind) & named]
    assert not missing, f"metrics declared under deployments/ but on no panel of {DASHBOARD.name}: {missing}"


def test_the_dashboard_covers_what_an_operator_asks():
    text = json.dumps(dashboard())
    for needle in (
        "ray_serve_num_http_requests_total",  # request rate by code
        "ray_twinfer_errors_total",  # errors by code and model
        'code=\\"overloaded\\"',  # overload refusals
        "histogram_quantile(0.99, sum by (le, model) (rate(ray_twinfer_decode_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, model) (rate(ray_twinfer_model_seconds_bucket",
        "ray_twinfer_batch_size_bucket",
        "ray_twinfer_model_retries_total",
    ):
        assert needle in text, needle


def scrape(url: str) -> set[str]:
    names = set()
    for line in httpx.get(url, timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def traffic(standard_app, serve_grpc_address):
    """tests/serving.py's app on the shared Serve, asked good and bad requests over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient

    from tests.images import corrupt_jpeg, small_jpeg
    from tests.serving import STANDARD_APP

    jpeg = {"headers": {"content-type": "image/jpeg"}}
    with httpx.Client(base_url=standard_app, timeout=120) as client:
        for _ in range(3):
            assert (
                client.post("/v1/models/efficientnet_lite0/classify", content=small_jpeg(), **jpeg).status_code == 200
            )
        bad = client.post("/v1/models/efficientnet_lite0/classify", content=corrupt_jpeg(), **jpeg)
        assert bad.json()["error"]["code"] == "invalid_image"
        assert client.get("/v1/models/nothing-here").status_code == 404
    with grpcclient.InferenceServerClient(serve_grpc_address) as grpc:
        assert grpc.is_server_live(headers={"application": STANDARD_APP})
    return f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"


def test_rays_metrics_endpoint_serves_every_name_the_dashboard_asks_for(traffic):
    named = named_metrics(dashboard())
    # recorded by the traffic above: they must be exported under the names the rule gives
    recorded = {
        n
        for name in ("twinfer_errors_total", "twinfer_decode_seconds", "twinfer_batch_size", "twinfer_model_seconds")
        for n in exported_names(name, declared_metrics()[name])
    }
    wanted = {n for n in named if n.startswith("ray_serve_")} | recorded
    # Ray's agent exports what the replicas report every few seconds: poll until all is there
    for _ in range(240):
        missing = wanted - scrape(traffic)
        if not missing:
            break
        time.sleep(0.5)
    assert not missing, f"not exported by Ray: {sorted(missing)}"
