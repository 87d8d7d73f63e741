"""Admission latency: how long Blacktop's validating webhook takes to answer, p50 and p99.

Starts a local control plane and the operator (as `blacktop run` does), installs the tiny golden
path, an environment with a budget, and the example policies, then measures two paths:

* webhook: AdmissionReview POSTs straight to the operator's HTTPS endpoint
  (/validate-servicerequest and /validate-environment): TLS, Kopf, the handler, its API reads and
  the CEL evaluation, without the apiserver;
* apiserver: dry-run creates of a ServiceRequest through the apiserver (what `kubectl apply
  --dry-run=server` does), i.e. the latency a user adds by having Blacktop's webhook in the path;
* 20 concurrent clients posting ServiceRequest reviews to the webhook (target p99 <= 50 ms);
* while --load objects (default 2,000) are created through the apiserver by 8 clients, as a GitOps
  sync does (requests with a size the schema refuses: admitted, then refused by the reconciler, so the
  operator works on each without running OpenTofu): one client's reviews (target p99 <= 50 ms), and
  the creates themselves.

    .venv/bin/python bench/admission_latency.py [--requests 300] [--load 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from harness import admission_review, post_review, start_operator, wait

from blacktop.kube.client import KubeClient
from blacktop.kube.install import install
from blacktop.localcluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"p50 {statistics.median(ordered):7.2f} ms   p99 {p99:7.2f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blacktop-bench-admission-"))
    with LocalCluster(work / "cluster") as cluster:
        client = KubeClient.from_kubeconfig(cluster.kubeconfig)
        asyncio.run(install(client))
        operator = start_operator(cluster.kubeconfig, work / "operator.log")
        try:
            run(cluster.kubeconfig, client, operator.ports["webhook"], args.requests, args.load)
        finally:
            operator.stop()
            client.close()
    if not os.environ.get("BLACKTOP_BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)


def kubectl(kubeconfig: Path, *args: str, body: dict[str, Any] | None = None) -> None:
    from blacktop.toolbox import find_tool

    subprocess.run(
        [str(find_tool("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=json.dumps(body) if body else None,
        text=True,
        check=True,
        capture_output=True,
    )


def run(kubeconfig: Path, client: KubeClient, webhook_port: int, requests: int, load: int) -> None:
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
    for policy in policies:
        kubectl(kubeconfig, "apply", "-f", str(policy))
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
        return post_review(webhook_port, path, payload, tls)

    for label, path, kind, plural, obj in (
        ("webhook /validate-servicerequest", "validate-servicerequest", "ServiceRequest", "servicerequests", request),
        ("webhook /validate-environment   ", "validate-environment", "Environment", "environments", environment),
    ):
        samples = []
        for i in range(requests + 20):
            payload = admission_review(kind, plural, obj)
            start = time.perf_counter()
            answer = post(path, payload)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= 20:
                samples.append(elapsed)
        allowed = answer["response"]["allowed"]
        warnings = len(answer["response"].get("warnings") or [])
        print(f"  {label}  {percentiles(samples)}   allowed={allowed} warnings={warnings}")

    dry_run_path = "/apis/platform.blacktop.dev/v1alpha1/namespaces/bench-dev/servicerequests"

    def dry_runs() -> list[float]:
        samples = []
        for i in range(requests + 20):
            start = time.perf_counter()
            client.request_sync("POST", dry_run_path, body=request, query={"dryRun": "All"})
            elapsed = (time.perf_counter() - start) * 1000
            if i >= 20:
                samples.append(elapsed)
        return samples

    print(f"  apiserver dry-run create, webhook on    {percentiles(dry_runs())}")

    def timed_review(_: int) -> float:
        payload = admission_review("ServiceRequest", "servicerequests", request)
        start = time.perf_counter()
        post("validate-servicerequest", payload)
        return (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(timed_review, range(40)))  # warm-up: every client's connection
        concurrent = list(pool.map(timed_review, range(requests * 4)))
    print(f"  webhook, 20 concurrent clients          {percentiles(concurrent)}   (target p99 <= 50 ms)")

    # A prod environment: tiny is offered in dev and staging only, so each created request is admitted,
    # reconciled once (TierNotAllowed in its status) and needs no run: the operator's share of a
    # GitOps sync, without tofu competing for the cores.
    kubectl(kubeconfig, "apply", "-f", "-", body={**environment, "metadata": {"name": "bench-load"}, "spec": {
        "team": "bench", "tier": "prod", "ttl": "2h"}})  # fmt: skip
    kubectl(kubeconfig, "wait", "--for=condition=Ready", "environment/bench-load", "--timeout=60s")
    load_path = "/apis/platform.blacktop.dev/v1alpha1/namespaces/bench-load/servicerequests"

    def create(i: int) -> float:
        body = {
            "apiVersion": API,
            "kind": "ServiceRequest",
            "metadata": {"name": f"load-{i}", "namespace": "bench-load"},
            "spec": {"goldenPath": "tiny", "parameters": {}},
        }
        start = time.perf_counter()
        client.request_sync("POST", load_path, body=body)
        return (time.perf_counter() - start) * 1000

    creating = threading.Event()
    creating.set()
    creates: list[float] = []

    def sync() -> None:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            creates.extend(pool.map(create, range(load)))
        creating.clear()
        print(f"  {load} creates by 8 clients took {time.perf_counter() - started:.1f} s")

    loader = threading.Thread(target=sync)
    loader.start()
    during: list[float] = []
    while creating.is_set():
        during.append(timed_review(0))
    loader.join()
    print(f"  webhook, while {load} objects are created {percentiles(during)}   (target p99 <= 50 ms)")
    print(f"  apiserver create (webhook on), meanwhile {percentiles(creates)}")

    def looked_at() -> bool:  # every created request has a stage: the operator is at rest again
        items = client.request_sync("GET", load_path)["items"]
        return all((item.get("status") or {}).get("stage") for item in items)

    wait(looked_at, 600, f"the operator to look at the {load} requests")
    kubectl(kubeconfig, "delete", "validatingwebhookconfiguration", "blacktop")
    print(f"  apiserver dry-run create, webhook off   {percentiles(dry_runs())}")


if __name__ == "__main__":
    main()
