"""The local control plane is a real cluster: RBAC, tokens, garbage collection, namespace deletion."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from blacktop.localcluster import LocalCluster, processes
from helpers import Kubectl, unique, wait_for

pytestmark = pytest.mark.integration


def test_readyz_and_pinned_version(kubectl: Kubectl) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"].startswith("v1.35.")


def test_owned_objects_are_garbage_collected(kubectl: Kubectl) -> None:
    ns = unique("gc")
    kubectl("create", "namespace", ns)
    try:
        kubectl("create", "configmap", "owner", "-n", ns)
        owner = json.loads(kubectl("get", "configmap", "owner", "-n", ns, "-o", "json").stdout)
        dependent = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": ns,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
                ],
            },
        }
        kubectl("create", "-f", "-", input=json.dumps(dependent))
        kubectl("delete", "configmap", "owner", "-n", ns)
        wait_for(
            lambda: kubectl("get", "configmap", "dependent", "-n", ns, check=False).returncode != 0,
            timeout=60,
            what="the garbage collector to delete the dependent",
        )
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def test_namespace_deletion_completes(kubectl: Kubectl) -> None:
    ns = unique("nsdel")
    kubectl("create", "namespace", ns)
    kubectl("create", "configmap", "data", "-n", ns, "--from-literal=a=b")
    kubectl("delete", "namespace", ns, "--wait=false")
    wait_for(
        lambda: kubectl("get", "namespace", ns, check=False).returncode != 0,
        timeout=90,
        what="the namespace to be gone (not stuck Terminating)",
    )


def test_rbac_is_enforced_for_a_real_user(cluster: Any, kubectl: Kubectl) -> None:
    if not isinstance(cluster, LocalCluster):
        pytest.fail("this test needs the local control plane (unset BLACKTOP_TEST_KUBECONFIG)")
    config = cluster.user_kubeconfig("nobody", ["some-group"])
    result = Kubectl(config)("get", "namespaces", check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert "nobody" in result.stderr


def test_token_request_authenticates(kubectl: Kubectl) -> None:
    ns = unique("token")
    kubectl("create", "namespace", ns)
    try:
        kubectl("create", "serviceaccount", "robot", "-n", ns)
        token = kubectl("create", "token", "robot", "-n", ns).stdout.strip()
        review = json.loads(
            kubectl(
                "create",
                "-o",
                "json",
                "-f",
                "-",
                input=json.dumps(
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
                ),
            ).stdout
        )
        assert review["status"]["authenticated"] is True
        assert review["status"]["user"]["username"] == f"system:serviceaccount:{ns}:robot"
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c")
    cluster.start()
    pids = cluster.pids
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    kubectl = Kubectl(cluster.kubeconfig)
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    cluster.stop()
    assert [name for name, pid in pids.items() if processes.alive(pid)] == []


def test_cli_cluster_up_and_down(tmp_path: Path) -> None:
    """`blacktop cluster up` outlives the command (a node by default), `down` stops it all."""
    import sys

    from blacktop.localcluster import node

    state = tmp_path / "state"
    up = subprocess.run(
        [sys.executable, "-m", "blacktop", "cluster", "up", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    try:
        export = next(line for line in up.stdout.splitlines() if line.startswith("export KUBECONFIG="))
        kubeconfig = Path(export.split("=", 1)[1])
        kubectl = Kubectl(kubeconfig)
        assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        ready = kubectl("get", "node", node.NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        assert ready.stdout == "True"
        status = subprocess.run(
            [sys.executable, "-m", "blacktop", "cluster", "status", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        # With a node the apiserver listens on the host end of the node's link (100.64.<slot>.1).
        assert status.stdout.startswith("up at https://100.64."), status.stdout
        slot = int(status.stdout.split("100.64.", 1)[1].split(".", 1)[0])
        pids = json.loads((state / "state.json").read_text())["pids"]
        assert any(name.startswith("node/") for name in pids), pids
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "blacktop", "cluster", "down", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids.values() if processes.alive(pid)] == []
    net = node.NodeNetwork(slot)
    assert not Path(f"/sys/class/net/{net.host_iface}").exists()
    assert sorted(Path("/sys/fs/cgroup").glob(f"*/{net.cgroup_root}")) == []
