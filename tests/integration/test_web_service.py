"""The web-service golden path on the local cluster and its node: hashicorp/kubernetes (built offline)
creates a Deployment and a Service in the environment's namespace, Blacktop adds the PodMonitor and
dashboard; the request is Ready once its pods are, and the service answers HTTP through its Service.

The local cluster has no DNS, so HTTP goes to the Service's ClusterIP (from the host, as the node's
routes allow, and from a Pod); the connection Secret's URL is the Service's in-cluster DNS name.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from blacktop.localcluster import images
from helpers import (
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    get,
    install_monitoring_crds,
    make_environment,
    secret_values,
    service_request,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.integration

DEPLOYER = "web-service-deployer"


def web_service_golden_path(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "goldenpath-web-service.yaml").read_text())
    body["metadata"]["name"] = name
    return body


@pytest.fixture(scope="module")
def deployer(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[None]:
    """The example deployer ServiceAccount and its credentials Secret, as the README tells a platform team."""
    kubectl("apply", "-f", str(REPO / "examples" / "web-service-deployer.yaml"))
    token = kubectl("create", "token", DEPLOYER, "-n", "blacktop-system", "--duration=1h").stdout.strip()
    config = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = config["clusters"][0]["cluster"]
    data = {
        "KUBE_HOST": cluster["server"],
        "KUBE_TOKEN": token,
        "KUBE_CLUSTER_CA_CERT_DATA": base64.b64decode(cluster["certificate-authority-data"]).decode(),
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": DEPLOYER, "namespace": "blacktop-system"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    apply_json(kubectl, secret)
    yield
    kubectl("delete", "secret", DEPLOYER, "-n", "blacktop-system", "--ignore-not-found")


def test_a_web_service_runs_its_pods_and_serves_http(
    kubectl: Kubectl, operator: OperatorProcess, deployer: None
) -> None:
    install_monitoring_crds(kubectl)
    golden = apply_ready(kubectl, web_service_golden_path(unique("web")))
    env = make_environment(kubectl, unique("shop-dev"), "shop")
    name = unique("storefront")
    request = service_request(name, env, golden, image=images.DEMO_APP_IMAGE, size="medium", health_path="/healthz")
    apply_json(kubectl, request)
    try:
        sr = wait_ready(kubectl, name, env, timeout=240)
        deployment = get(kubectl, "deployment", name, "-n", env)
        assert deployment is not None
        labels = deployment["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "blacktop"
        assert labels["platform.blacktop.dev/golden-path"] == golden
        assert labels["platform.blacktop.dev/service-request"] == name
        assert labels["platform.blacktop.dev/team"] == "shop"
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["labels"]["platform.blacktop.dev/service-request"] == name
        (container,) = pod["spec"]["containers"]
        assert container["image"] == images.DEMO_APP_IMAGE
        assert container["resources"] == {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        }
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
        assert container["livenessProbe"]["httpGet"]["port"] == "http"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        # Ready means its pods are: the apply waited for the rollout.
        assert deployment["status"].get("readyReplicas") == 1
        pods = json.loads(
            kubectl("get", "pods", "-n", env, "-l", f"app.kubernetes.io/name={name}", "-o", "json").stdout
        )
        assert [p["status"]["phase"] for p in pods["items"]] == ["Running"]
        service = get(kubectl, "service", name, "-n", env)
        assert service is not None
        with urllib.request.urlopen(f"http://{service['spec']['clusterIP']}/", timeout=10) as response:
            assert response.status == 200
            assert response.read().decode().strip() == "hello from blacktop"
        assert service["spec"]["selector"]["platform.blacktop.dev/service-request"] == name
        assert service["spec"]["ports"][0]["targetPort"] == "http"

        values = secret_values(kubectl, sr["status"]["connectionSecret"], env)
        assert values["url"] == f"http://{name}.{env}.svc.cluster.local"
        assert values["port"] == "80"
        monitor = get(kubectl, "podmonitor", f"{name}-pods", "-n", env)
        assert monitor is not None
        assert monitor["spec"]["selector"]["matchLabels"] == {"platform.blacktop.dev/service-request": name}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
        dashboard = get(kubectl, "configmap", f"{name}-dashboard", "-n", env)
        assert dashboard is not None
        assert f"Web service {env}/{name}" in next(iter(dashboard["data"].values()))
        assert (condition(sr, "MonitoringConfigured") or {}).get("status") == "True"
    finally:
        kubectl("delete", "servicerequest", name, "-n", env, "--wait=true", "--timeout=180s")
    # Deleting the request destroys what its module made.
    assert get(kubectl, "deployment", name, "-n", env) is None
    assert get(kubectl, "service", name, "-n", env) is None
    kubectl("delete", "environment", env, "--wait=false")


def test_another_namespace_cannot_be_named_and_tenants_keep_to_their_own(
    kubectl: Kubectl, operator: OperatorProcess, deployer: None
) -> None:
    golden = apply_ready(kubectl, web_service_golden_path(unique("web")))
    victim = make_environment(kubectl, unique("bank-dev"), "bank")
    intruder = make_environment(kubectl, unique("mallory-dev"), "mallory")
    as_mallory = ("--as=mallory", "--as-group=mallory")
    body = service_request(unique("svc"), intruder, golden, image="registry.example.com/m/app:1")
    body["spec"]["parameters"]["namespace"] = victim  # the module's namespace variable, if it could be set
    refused = try_apply(kubectl, body, *as_mallory)
    if refused.returncode == 0:  # admitted: the reconciler refuses the parameter before any run
        wait_for(
            lambda: (
                (c := condition(get(kubectl, "servicerequest", body["metadata"]["name"], "-n", intruder)))
                and c["reason"] == "InvalidParameters"
            ),
            what="the request to be refused for its namespace parameter",
        )
        assert get(kubectl, "deployment", body["metadata"]["name"], "-n", victim) is None
    else:
        assert "namespace" in refused.stderr
    # Nor may mallory put a request into bank's namespace, or read what bank's services run.
    into_victim = service_request(unique("svc"), victim, golden, image="registry.example.com/m/app:1")
    denied = try_apply(kubectl, into_victim, *as_mallory)
    assert denied.returncode != 0
    read = kubectl("get", "deployments", "-n", victim, *as_mallory, check=False)
    assert read.returncode != 0
    assert "forbidden" in read.stderr
    kubectl("delete", "servicerequest", body["metadata"]["name"], "-n", intruder, "--ignore-not-found", "--wait=false")
    kubectl("delete", "environment", victim, intruder, "--wait=false")
