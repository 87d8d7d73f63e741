"""Runner modes side by side: what a runner pod costs per run against the subprocess runner, and the
throughput of a burst of requests in both modes.

Starts a local cluster with a node and the operator image built from this checkout, installs the
CRDs, the tiny golden path (no provider: about a second of OpenTofu work, so what is measured is
the runner) and Environments of five teams, then runs the operator on the host, as `make run` does,
once per mode (BLACKTOP_RUNNER=local, then pod: its runs are pods on the node):

* one at a time: ``--single`` requests, each from `kubectl apply` to Ready (the pod's start, the
  image's Python, `tofu init` from the image's mirror and the exchange through the API server are the
  difference);
* a burst: ``--burst`` requests at once, spread over the five teams, until all are Ready: wall time
  and requests per minute, with ``--slots`` runs at once (BLACKTOP_MAX_CONCURRENT_RUNS; each team
  gets half of them).

Between the modes the operator is stopped and its requests are removed without destroying
(finalizers dropped), so the next mode starts from an empty cluster. The machine's load (`uptime`)
is printed before and after: on a shared 2-core machine it moves the figures more than anything.

    .venv/bin/python bench/runner_modes.py [--single 5] [--burst 50] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from blacktop.kube.client import KubeClient
from blacktop.kube.install import install
from blacktop.localcluster import LocalCluster, images
from blacktop.toolbox import find_tool

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"
TEAMS = ("alpha", "bravo", "charlie", "delta", "echo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class Cluster:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.binary = str(find_tool("kubectl"))

    def kubectl(self, *args: str, body: Any = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=json.dumps(body) if body is not None else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def apply(self, body: Any) -> None:
        self.kubectl("apply", "-f", "-", body=body)

    def ready_requests(self) -> dict[str, float]:
        """name -> the time it was first seen Ready (by this process's clock)."""
        items = json.loads(self.kubectl("get", "servicerequests", "-A", "-o", "json"))["items"]
        ready = {}
        for item in items:
            conditions = (item.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready[f"{item['metadata']['namespace']}/{item['metadata']['name']}"] = time.monotonic()
        return ready


def request(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"goldenPath": "tiny", "parameters": {"size": "small"}},
    }


def start_operator(cluster: Cluster, mode: str, image: str, slots: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "BLACKTOP_RUNNER": mode,
        "BLACKTOP_RUNNER_IMAGE": image,
        "BLACKTOP_MAX_CONCURRENT_RUNS": str(slots),
        "BLACKTOP_METRICS_PORT": "0",
        "BLACKTOP_HEALTH_PORT": str(free_port()),
        "BLACKTOP_WEBHOOK_PORT": "0",
        "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "false",
        "BLACKTOP_DRIFT_CHECK_SECONDS": "3600",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "blacktop", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop_operator(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def forget_requests(cluster: Cluster) -> None:
    """Remove every request without destroying it (the next mode starts from none)."""
    columns = "custom-columns=NS:.metadata.namespace,N:.metadata.name"
    listed = cluster.kubectl("get", "servicerequests", "-A", "--no-headers", "-o", columns)
    unfinalized = '{"metadata":{"finalizers":null}}'
    for line in listed.splitlines():
        if not line.strip():
            continue
        namespace, name = line.split()
        cluster.kubectl(
            "patch", "servicerequest", name, "-n", namespace, "--type=merge", "-p", unfinalized, check=False
        )
        cluster.kubectl("delete", "servicerequest", name, "-n", namespace, "--wait=false", check=False)
    cluster.kubectl("delete", "pods", "-n", "blacktop-system", "--all", "--wait=true", check=False)


def wait_all(cluster: Cluster, names: list[str], timeout: float) -> dict[str, float]:
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        for name, at in cluster.ready_requests().items():
            seen.setdefault(name, at)
        if all(name in seen for name in names):
            return seen
        time.sleep(0.2)
    missing = [n for n in names if n not in seen]
    raise SystemExit(f"timed out: {len(missing)} of {len(names)} requests not Ready ({missing[:3]} ...)")


def measure(cluster: Cluster, mode: str, image: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    proc = start_operator(cluster, mode, image, args.slots, work / f"operator-{mode}.log")
    try:
        for team in TEAMS:  # reconciled by the operator (at once in the second mode: they are Ready)
            cluster.kubectl("wait", "--for=condition=Ready", f"environment/{team}-dev", "--timeout=180s")
        singles = []
        for i in range(args.single + 1):  # the first is a warm-up (module parsed, image paged in)
            name = f"{mode}-one-{i}"
            started = time.monotonic()
            cluster.apply(request(name, f"{TEAMS[0]}-dev"))
            done = wait_all(cluster, [f"{TEAMS[0]}-dev/{name}"], timeout=300)
            if i:
                singles.append(done[f"{TEAMS[0]}-dev/{name}"] - started)
        names = []
        started = time.monotonic()
        for i in range(args.burst):
            team = TEAMS[i % len(TEAMS)]
            cluster.apply(request(f"{mode}-burst-{i}", f"{team}-dev"))
            names.append(f"{team}-dev/{mode}-burst-{i}")
        done = wait_all(cluster, names, timeout=1800)
        burst = max(done.values()) - started
        return {
            "single_p50": statistics.median(singles),
            "single_max": max(singles),
            "burst_seconds": burst,
            "burst_per_minute": 60 * args.burst / burst,
        }
    finally:
        stop_operator(proc)
        forget_requests(cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--single", type=int, default=5, help="requests one at a time (after one warm-up)")
    parser.add_argument("--burst", type=int, default=50, help="requests at once")
    parser.add_argument("--slots", type=int, default=4, help="BLACKTOP_MAX_CONCURRENT_RUNS")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blacktop-bench-runners-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"before: {load()}", flush=True)
    started = time.monotonic()
    image = images.build_operator_image(out=work / "blacktop.oci.tar")
    print(f"operator image {image.name}: {time.monotonic() - started:.0f}s", flush=True)
    with LocalCluster(work / "cluster", node=True, images=[image]) as local:
        client = KubeClient.from_kubeconfig(local.kubeconfig)
        try:
            asyncio.run(install(client))
        finally:
            client.close()
        cluster = Cluster(local.kubeconfig)
        cluster.apply(yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text()))
        for team in TEAMS:
            env = {"apiVersion": API, "kind": "Environment", "metadata": {"name": f"{team}-dev"}}
            cluster.apply({**env, "spec": {"team": team, "tier": "dev"}})
        results = {}
        for mode in ("local", "pod"):
            print(f"measuring {mode} ...", flush=True)
            results[mode] = measure(cluster, mode, image.name, args, work)
    local_mode, pod_mode = results["local"], results["pod"]
    print(f"\nafter: {load()}")
    print(f"\ntiny golden path, {args.slots} slots (2 per team), operator on the host, node with 2 cores shared\n")
    print(f"{'':48} {'local':>12} {'pod':>12} {'pod - local':>12}")
    rows = (
        (f"one request, apply to Ready, p50 (n={args.single})", "single_p50", "s"),
        (f"one request, apply to Ready, max (n={args.single})", "single_max", "s"),
        (f"{args.burst} requests at once, until all Ready", "burst_seconds", "s"),
        (f"{args.burst} requests at once, throughput", "burst_per_minute", "/min"),
    )
    for label, key, unit in rows:
        a, b = local_mode[key], pod_mode[key]
        print(f"{label:48} {a:8.1f}{unit:<4} {b:8.1f}{unit:<4} {b - a:+8.1f}{unit:<4}")


if __name__ == "__main__":
    main()
