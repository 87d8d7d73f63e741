"""Admission latency: how long Blacktop's validating webhook takes to answer, p50 and p99.

Starts a local control plane and the operator (as `blacktop run` does), installs the tiny golden
path, an environment with a budget, and the example policies, then measures two paths:

* webhook: AdmissionReview POSTs straight to the operator's HTTPS endpoint
  (/validate-servicerequest and /validate-environment): TLS, Kopf, the handler, its API reads and
  the CEL evaluation, without the apiserver;
* apiserver: dry-run creates of a ServiceRequest through the apiserver (what `kubectl apply
  --dry-run=server` does), i.e. the latency a user adds by having Blacktop's webhook in the path.

    .venv/bin/python bench/admission_latency.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from benchlib import start_operator, wait

from blacktop.kube.client import KubeClient
from blacktop.kube.install import install
from blacktop.localcluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"p50 {statistics.median(ordered):7.2f} ms   p99 {p99:7.2f} ms   (n={len(ordered)})"


def review(kind: str, plural: str, obj: dict[str, Any]) -> bytes:
    meta = obj["metadata"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "platform.blacktop.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "platform.blacktop.dev", "version": "v1alpha1", "resource": plural},
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "operation": "CREATE",
                "userInfo": {"username": "alice", "groups": ["bench", "system:authenticated"]},
                "object": obj,
                "oldObject": None,
                "dryRun": True,
            },
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blacktop-bench-admission-"))
    with LocalCluster(work / "cluster") as cluster:
        client = KubeClient.from_kubeconfig(cluster.kubeconfig)
        asyncio.run(install(client))
        operator = start_operator(cluster.kubeconfig, work / "operator.log")
        try:
            run(cluster.kubeconfig, client, operator.ports["webhook"], args.requests)
        finally:
            operator.stop()
            client.close()


def kubectl(kubeconfig: Path, *args: str, body: dict[str, Any] | None = None) -> None:
    from blacktop.toolbox import find_tool

    subprocess.run(
        [str(find_tool("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=json.dumps(body) if body else None,
        text=True,
        check=True,
        capture_output=True,
    )


def run(kubeconfig: Path, client: KubeClient, webhook_port: int, requests: int) -> None:
    config = wait(
        lambda: client.request_sync(
            "GET", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", query=None
        )["items"],
        60,
        "the operator to register its webhook",
    )[0]
    ca = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
    tls = ssl.create_default_context(cadata=ca.decode())

    tiny = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
    kubectl(kubeconfig, "apply", "-f", "-", body=tiny)
    environment = {
        "apiVersion": API,
        "kind": "Environment",
        "metadata": {"name": "bench-dev"},
        "spec": {"team": "bench", "tier": "dev", "ttl": "2h", "budget": {"monthly": "500"}},
    }
    kubectl(kubeconfig, "apply", "-f", "-", body=environment)
    policies = sorted((REPO / "examples" / "policies").glob("*.yaml"))
    for path in policies:
        kubectl(kubeconfig, "apply", "-f", str(path))
    kubectl(kubeconfig, "wait", "--for=condition=Ready", "environment/bench-dev", "--timeout=60s")
    # Some siblings, so the budget rule has requests to sum.
    for i in range(5):
        sibling = {
            "apiVersion": API,
            "kind": "ServiceRequest",
            "metadata": {"name": f"sibling-{i}", "namespace": "bench-dev"},
            "spec": {"goldenPath": "tiny", "parameters": {"size": "small"}},
        }
        kubectl(kubeconfig, "apply", "-f", "-", body=sibling)
    request = {
        "apiVersion": API,
        "kind": "ServiceRequest",
        "metadata": {"name": "bench", "namespace": "bench-dev"},
        "spec": {"goldenPath": "tiny", "parameters": {"size": "medium"}},
    }
    print(f"{len(policies)} policies, 5 sibling requests; {requests} requests per path (after 20 warm-up)")

    def post(path: str, payload: bytes) -> dict[str, Any]:
        req = urllib.request.Request(
            f"https://127.0.0.1:{webhook_port}/{path}", data=payload, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, context=tls, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    for label, path, kind, plural, obj in (
        ("webhook /validate-servicerequest", "validate-servicerequest", "ServiceRequest", "servicerequests", request),
        ("webhook /validate-environment   ", "validate-environment", "Environment", "environments", environment),
    ):
        samples = []
        for i in range(requests + 20):
            payload = review(kind, plural, obj)
            start = time.perf_counter()
            answer = post(path, payload)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= 20:
                samples.append(elapsed)
        allowed = answer["response"]["allowed"]
        warnings = len(answer["response"].get("warnings") or [])
        print(f"  {label}  {percentiles(samples)}   allowed={allowed} warnings={warnings}")

    path = "/apis/platform.blacktop.dev/v1alpha1/namespaces/bench-dev/servicerequests"

    def dry_runs() -> list[float]:
        samples = []
        for i in range(requests + 20):
            start = time.perf_counter()
            client.request_sync("POST", path, body=request, query={"dryRun": "All"})
            elapsed = (time.perf_counter() - start) * 1000
            if i >= 20:
                samples.append(elapsed)
        return samples

    print(f"  apiserver dry-run create, webhook on    {percentiles(dry_runs())}")
    kubectl(kubeconfig, "delete", "validatingwebhookconfiguration", "blacktop")
    print(f"  apiserver dry-run create, webhook off   {percentiles(dry_runs())}")


if __name__ == "__main__":
    main()
