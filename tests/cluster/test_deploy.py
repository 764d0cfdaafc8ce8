"""The deployment files: the cluster launcher YAML passes Ray's own config validation, the KubeRay
manifests have the structure the CRDs ask for (autoscaling on, worker bounds consistent), the
RayService's serve config passes Serve's schema, and the Grafana dashboard queries only metrics
raymask exports."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "cluster" / "deploy"


def test_the_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((DEPLOY / "ray-cluster-aws.yaml").read_text())
    validate_config(cfg)  # raises on a schema violation
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    worker = cfg["available_node_types"]["mask_worker"]
    assert 0 == worker["min_workers"] < worker["max_workers"] <= cfg["max_workers"]
    assert not re.search(
        r"(?i)secret|password|BEGIN .*KEY", (DEPLOY / "ray-cluster-aws.yaml").read_text()
    )


def _groups(spec: dict) -> list[dict]:
    return spec["workerGroupSpecs"]


def test_kuberay_manifests_have_autoscaling_and_consistent_groups():
    import ray

    cluster = yaml.safe_load((DEPLOY / "kuberay-raycluster.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2]
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"  # no mask workers on the head
        for c in head["template"]["spec"]["containers"]:
            assert {"name", "image", "resources"} <= set(c)
        for g in _groups(spec):
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
            env = {e["name"]: e.get("value") for c in g["template"]["spec"]["containers"]
                   for e in c.get("env", [])}  # fmt: skip
            assert env.get("RAYMASK_KEYRING", "").startswith("/etc/raymask")  # keys from a Secret
            vols = g["template"]["spec"]["volumes"]
            assert any(v.get("secret", {}).get("secretName") == "raymask-keys" for v in vols)


def test_the_rayservice_serve_config_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    service = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    cfg = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = cfg.applications
    assert app.import_path == "raymask.cluster.serve_app:app_builder"
    (dep,) = app.deployments
    assert dep.autoscaling_config["max_replicas"] > dep.autoscaling_config["min_replicas"]


def test_the_grafana_dashboard_queries_only_metrics_raymask_exports():
    exported = set(re.findall(r'"(raymask_[a-z_]+)"', (REPO / "actors" / "metrics.py").read_text()))
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            for m in re.findall(r"ray_(raymask_[a-z_]+)", t["expr"]):
                used.add(re.sub(r"_(total|bucket|sum|count)$", "", m))
    assert used and used <= exported, used - exported
    assert {"raymask_records", "raymask_batch_latency_seconds", "raymask_queue_depth"} <= used
