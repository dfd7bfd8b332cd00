"""deploy/kuberay/rayservice.yaml stays in step with serve_config.yaml and with what Serve accepts.

The RayService's ``serveConfigV2`` must hold the very applications (and proxy / HTTP options) that
``serve run serve_config.yaml`` deploys, so editing one file without the other fails here. The
cluster it describes must be able to hold those applications.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.config import AppArgs

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "serve_config.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert len(documents) == 1, "one RayService, no other objects (the token Secret is made with kubectl)"
    return documents[0]


@pytest.fixture(scope="module")
def serve_config_v2(manifest) -> dict:
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string (a `|` block), not a mapping"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def cpus(quantity) -> float:
    """A Kubernetes CPU quantity ("2", "500m", 2) in CPUs."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_it_is_a_rayservice_with_token_auth(manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    (cpu_group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "cpu"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in containers(cpu_group))


def test_serve_config_v2_is_serve_config_yaml(serve_config_v2, serve_config):
    assert serve_config_v2["applications"] == serve_config["applications"]
    for key in ("proxy_location", "http_options", "grpc_options", "logging_config"):
        assert serve_config_v2.get(key) == serve_config.get(key), key


def test_serve_config_v2_is_what_serve_accepts(serve_config_v2):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config_v2)  # what the dashboard checks when KubeRay submits it
    for app in serve_config_v2["applications"]:
        assert app["import_path"] == "deployments.app:build_app"
        AppArgs.model_validate(app["args"])  # what build_app checks when the app starts


def test_ray_version_and_ports_match(manifest, serve_config_v2):
    import ray

    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2]
    port = serve_config_v2["http_options"]["port"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # KubeRay's Serve service and health checks use the container port named "serve"
        ports = {p["name"]: p["containerPort"] for c in containers(group) for p in c.get("ports", [])}
        assert ports.get("serve") == port, group.get("groupName", "head")
        assert ports.get("grpc") == serve_config_v2["grpc_options"]["port"], group.get("groupName", "head")
    head_ports = {p["name"]: p["containerPort"] for c in containers(cluster["headGroupSpec"]) for p in c["ports"]}
    assert head_ports["dashboard"] == 8265  # where KubeRay submits serveConfigV2


def test_the_worker_groups_hold_the_enabled_deployments_at_start_and_at_most(manifest, serve_config_v2):
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = cluster["workerGroupSpecs"]

    def total(resource: str, count: str) -> float:
        return sum(cpus(c["resources"]["limits"].get(resource, 0)) * g[count] for g in groups for c in containers(g))

    apps = [AppArgs.model_validate(app["args"]) for app in serve_config_v2["applications"]]

    def needed(replicas, resource: str) -> float:
        return sum(
            getattr(d, resource) * replicas(d) for a in apps for d in [a.ingress, *a.enabled_models]
            if hasattr(d, resource)
        )  # fmt: skip

    def at_start(deployment) -> int:
        scaling = deployment.autoscaling_config
        return (scaling.initial_replicas or scaling.min_replicas) if scaling else deployment.most_replicas

    for replicas, count in ((at_start, "replicas"), (lambda d: d.most_replicas, "maxReplicas")):
        cpu, gpu = total("cpu", count), total("nvidia.com/gpu", count)
        assert needed(replicas, "num_cpus") <= cpu, f"the applications need more than the {cpu} CPUs of {count}"
        assert needed(replicas, "num_gpus") <= gpu, f"the applications need more than the {gpu} GPUs of {count}"
    grows = any(d.autoscaling_config for a in apps for d in [a.ingress, *a.enabled_models])
    assert cluster["enableInTreeAutoscaling"] is grows  # Ray adds the pods Serve's autoscaler asks for
