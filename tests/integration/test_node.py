"""The local cluster's node: Pods run from locally built images, Services route (from the host and from
Pods), Pods reach the apiserver through the `kubernetes` Service, the apiserver reaches kubelet, and the
node leaves the host as it found it — after a clean stop and after its owner is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blacktop.localcluster import LocalCluster, images, node, processes
from helpers import Kubectl, apply_json, scratch_namespace, unique, wait_for

pytestmark = pytest.mark.integration


def _local(cluster: Any) -> LocalCluster:
    if not isinstance(cluster, LocalCluster) or cluster.network is None:
        pytest.fail("these tests need the local cluster with its node (unset BLACKTOP_TEST_KUBECONFIG)")
    return cluster


def demo_deployment(name: str, namespace: str, message: str) -> list[dict[str, Any]]:
    """A Deployment of the demo-app image serving ``message`` on 8080, and its Service on port 80."""
    labels = {"app": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": images.DEMO_APP_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["serve", "-message", message],
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]


def run_client(kubectl: Kubectl, namespace: str, *args: str) -> str:
    """Run the demo-app client in a Pod to completion; its output (it fails the test unless it succeeded)."""
    name = unique("client")
    kubectl(
        "run", name, "-n", namespace, f"--image={images.DEMO_APP_IMAGE}", "--image-pull-policy=Never",
        "--restart=Never", "--", "fetch", *args,
    )  # fmt: skip
    phase = wait_for(
        lambda: (
            (
                kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
                in {"Succeeded", "Failed"}
            )
            and kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
        ),
        timeout=60,
        what=f"client pod {name} to finish",
    )
    # `kubectl logs`: the apiserver calls the kubelet (InternalIP, its client certificate, kubelet's webhook authz).
    logs = kubectl("logs", name, "-n", namespace).stdout
    assert phase == "Succeeded", f"client {' '.join(args)} failed: {logs}"
    return logs


def test_pods_run_and_services_route_from_the_host_and_from_pods(cluster: Any, kubectl: Kubectl) -> None:
    local = _local(cluster)
    network = local.network
    assert network is not None
    with scratch_namespace(kubectl, "node") as namespace:
        for obj in demo_deployment("web", namespace, "hello-from-a-pod"):
            apply_json(kubectl, obj)
        kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
        pod = json.loads(kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"][0]
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        assert pod["status"]["podIP"].startswith(network.pod_cidr.rsplit(".", 2)[0])
        cluster_ip = kubectl("get", "service", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout

        # From the host, through the route into the node and kube-proxy's rules (how the apiserver calls webhooks).
        with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=10) as response:
            assert response.read().decode().strip() == "hello-from-a-pod"
        # From a Pod, through the Service.
        assert run_client(kubectl, namespace, f"http://{cluster_ip}/").strip() == "hello-from-a-pod"
        # From a Pod to the apiserver, through the `kubernetes` Service and its real endpoints, with the
        # Pod's own ServiceAccount token (the way an operator pod reaches the API).
        version = run_client(
            kubectl,
            namespace,
            "-insecure",
            "-bearer-file=/var/run/secrets/kubernetes.io/serviceaccount/token",
            f"https://{network.kubernetes_service_ip}/version",
        )
        assert json.loads(version)["gitVersion"].startswith("v1.35")
        endpoints = json.loads(kubectl("get", "endpointslices", "-n", "default", "-o", "json").stdout)["items"]
        addresses = {a for s in endpoints for ep in s.get("endpoints") or [] for a in ep["addresses"]}
        assert network.host_ip in addresses


def host_snapshot(slot: int, workdir: Path) -> dict[str, Any]:
    """What a node may change on the host, seen from the host: its iptables (all of them), bridges,
    routes, cgroup folders, mounts and processes under ``workdir``, and the kernel settings kubelet wants."""
    net = node.NodeNetwork(slot)
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    rules = sorted(line for line in iptables.splitlines() if line and not line.startswith(("#", ":")))
    chains = sorted(line.split()[0] for line in iptables.splitlines() if line.startswith(":"))
    bridges = subprocess.run(
        ["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    ).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout.splitlines()
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{net.cgroup_root}"))
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(workdir) in cmdline:
                procs.append(cmdline[:120])
    kernel = {key: Path("/proc/sys", key).read_text().strip() for key in ("vm/overcommit_memory", "kernel/panic")}
    return {
        "iptables rules": rules,
        "iptables chains": chains,
        "bridges": sorted(bridges.splitlines()),
        "routes via the node": [r for r in routes if net.host_iface in r],
        "link": Path(f"/sys/class/net/{net.host_iface}").exists(),
        "mounts under the work dir": [m for m in mounts if str(workdir) in m],
        "cgroups": cgroups,
        "processes": procs,
        "kernel settings": kernel,
    }


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A second cluster with a node, beside the session's (so two nodes run at once, in two slots)."""
    local = LocalCluster(tmp_path / "c", node=True, images=[images.demo_app_image()])
    try:
        local.start()
        yield local
    finally:
        local.stop()


def test_a_stopped_node_leaves_the_host_as_it_found_it(own_cluster: LocalCluster, cluster: Any) -> None:
    session = _local(cluster)
    net = own_cluster.network
    assert net is not None
    assert net.slot != session.network.slot  # type: ignore[union-attr]
    workdir = own_cluster.workdir
    kubectl = Kubectl(own_cluster.kubeconfig)
    before = host_snapshot(net.slot, workdir)
    # A Pod with a Service makes kube-proxy, CNI and kubelet write their rules, bridge, mounts, cgroups.
    for obj in demo_deployment("web", "default", "bye"):
        apply_json(kubectl, obj)
    kubectl("rollout", "status", "deployment/web", "--timeout=90s")
    during = host_snapshot(net.slot, workdir)
    assert during["cgroups"], "kubelet made no cgroups: is the Pod running on this node?"
    assert during["processes"], "no node processes under the work dir"
    # ... and none of it shows on the host but the link, its two routes, cgroups and processes.
    for key in ("iptables rules", "iptables chains", "bridges", "mounts under the work dir", "kernel settings"):
        assert during[key] == before[key], key
    pids = own_cluster.pids
    own_cluster.stop()
    after = host_snapshot(net.slot, workdir)
    after.pop("link")
    expected = {**before, "routes via the node": [], "cgroups": [], "processes": []}
    expected.pop("link")
    assert after == expected
    assert [name for name, pid in pids.items() if processes.alive(pid)] == []


_OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from blacktop.localcluster import LocalCluster, images
    cluster = LocalCluster(node=True, images=[images.demo_app_image()])
    cluster.start()
    print(cluster.workdir, cluster.network.slot, cluster.kubeconfig, flush=True)
    time.sleep(600)
    """
)


def test_a_killed_owner_takes_its_node_along_and_the_next_start_sweeps_the_rest(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        workdir_s, slot_s, kubeconfig = owner.stdout.readline().split()
        workdir, slot = Path(workdir_s), int(slot_s)
        kubectl = Kubectl(Path(kubeconfig))
        for obj in demo_deployment("web", "default", "soon-gone"):
            apply_json(kubectl, obj)
        kubectl("rollout", "status", "deployment/web", "--timeout=90s")
        assert host_snapshot(slot, workdir)["cgroups"]
    finally:
        os.killpg(owner.pid, signal.SIGKILL)  # no cleanup code runs: the kernel does what it can
        owner.wait(timeout=10)
    # The kernel killed every process (PR_SET_PDEATHSIG; the sandbox's pid namespace) and dropped the
    # node's network namespace, and with it the link and the routes.
    gone = wait_for(
        lambda: (s := host_snapshot(slot, workdir)) and not s["processes"] and not s["link"] and s,
        timeout=30,
        what="the killed cluster's processes and link to go",
    )
    assert gone["routes via the node"] == []
    assert gone["mounts under the work dir"] == []
    assert gone["cgroups"], "expected kubelet's cgroup folders to outlive the kill (the sweep's job)"
    assert workdir.exists()
    # The next cluster start removes what is left: the dead cluster's cgroups and work dir.
    with LocalCluster(tmp_path / "next", node=True):
        pass
    assert host_snapshot(slot, workdir)["cgroups"] == []
    assert not workdir.exists()
