"""Two operator replicas against the real control plane: exactly one reconciles, the standby takes
over within 15 s of the leader's death, and a partitioned leader stops its OpenTofu runs before its
lease can pass (and stands by once it can reach the API server again). Both replicas answer
admission reviews.

The partition is a TCP proxy between one replica (and its tools: the state backend uses the same
kubeconfig) and the API server that the test can freeze: connections stay open and nothing gets
through, as when a node loses its network.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    Kubectl,
    OperatorProcess,
    apiserver_webhook_cert,
    apply_json,
    apply_ready,
    get,
    make_environment,
    processes_in,
    service_request,
    slow_golden_path,
    tiny_golden_path,
    unique,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

LEASE = "blacktop-leader"
OPERATOR_NS = "blacktop-system"


class FreezableProxy:
    """A TCP proxy on loopback; :meth:`freeze` stops every byte both ways until :meth:`thaw`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        pair = {client: upstream, upstream: client}
        with client, upstream:
            while not self.closed.is_set():
                if self.frozen.is_set():
                    time.sleep(0.05)  # hold everything: a black hole, not a reset
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.frozen.is_set():  # frozen meanwhile: this byte is lost in the partition
                        return
                    pair[sock].sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def kubeconfig_through(proxy: FreezableProxy, kubeconfig: Path, path: Path) -> Path:
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def holder(kubectl: Kubectl) -> str | None:
    lease = get(kubectl, "lease", LEASE, "-n", OPERATOR_NS)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def role(replica: OperatorProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.health_port}/healthz", timeout=2) as response:
        return str(response.read().decode())


def admits(replica: OperatorProcess, cert: tuple[Path, Path]) -> bool:
    """Whether the replica's own webhook answers a review (a policy that does not compile is refused),
    posted with the apiserver's client certificate (``cert``: the replicas accept no other client)."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "operation": "CREATE",
            "object": {
                "metadata": {"name": "p"},
                "spec": {"rules": [{"name": "r", "expression": "((", "message": "m"}]},
            },
        },
    }
    request = urllib.request.Request(
        f"https://127.0.0.1:{replica.webhook_port}/validate-guardrailpolicy",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = ssl._create_unverified_context()  # the test only checks that it answers
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer["response"]["allowed"] is False and "does not compile" in answer["response"]["status"]["message"]


@pytest.fixture
def replicas(operator: OperatorProcess, installed: Path, modules_root: Path, tmp_path: Path) -> Iterator[Any]:
    """Starts replicas of the test's own (the session operator stopped meanwhile); stops them after."""
    operator.stop()
    started: list[OperatorProcess] = []

    def start(name: str, kubeconfig: Path | None = None) -> OperatorProcess:
        replica = OperatorProcess(
            kubeconfig or installed,
            tmp_path / f"{name}.log",
            env={"BLACKTOP_MODULES_ROOT": str(modules_root), "BLACKTOP_WORKSPACE_ROOT": str(tmp_path / f"ws-{name}")},
        )
        replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
    operator.start()


def test_one_replica_reconciles_and_the_standby_takes_over_within_15_seconds(
    kubectl: Kubectl, replicas: Any, cluster: Any
) -> None:
    first = replicas("first")
    wait_for(lambda: "leading" in role(first), timeout=60, what="the first replica to lead")
    apply_ready(kubectl, tiny_golden_path("tiny-failover"))
    env = make_environment(kubectl, unique("failover-env"), "payments")
    second = replicas("second")
    wait_for(lambda: "standing by" in role(second), timeout=30, what="the second replica to stand by")
    cert = apiserver_webhook_cert(cluster)
    assert admits(first, cert)
    assert admits(second, cert)  # a standby answers admission too

    before = unique("before")
    apply_json(kubectl, service_request(before, env, "tiny-failover"))
    wait_ready(kubectl, before, env)
    assert f"{env}/{before}" not in second.log_text()  # the standby did nothing

    leader = holder(kubectl)
    first.kill()
    died = time.monotonic()
    wait_for(lambda: holder(kubectl) not in (None, leader), timeout=30, interval=0.2, what="the standby to take over")
    took_over = time.monotonic() - died
    print(f"standby leading {took_over:.1f}s after the leader's death")
    assert took_over <= 15
    assert "leading" in role(second)
    after = unique("after")
    apply_json(kubectl, service_request(after, env, "tiny-failover"))
    wait_ready(kubectl, after, env)
    # The new leader resumed the old request without a run.
    assert f"{env}/{before} is up to date" in second.log_text()
    kubectl("delete", "environment", env, "--wait=true", "--timeout=180s")


def test_a_partitioned_leader_stops_its_runs_before_the_lease_can_pass(
    kubectl: Kubectl, replicas: Any, installed: Path, tmp_path: Path
) -> None:
    server = yaml.safe_load(installed.read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").split(":")
    proxy = FreezableProxy((host, int(port)))
    try:
        first = replicas("first", kubeconfig_through(proxy, installed, tmp_path / "through-proxy.kubeconfig"))
        wait_for(lambda: "leading" in role(first), timeout=60, what="the first replica to lead")
        apply_ready(kubectl, slow_golden_path("slow-partition", count=400))
        env = make_environment(kubectl, unique("partition-env"), "payments")
        second = replicas("second")
        name = unique("partitioned")
        apply_json(kubectl, service_request(name, env, "slow-partition"))
        workspaces = tmp_path / "ws-first"
        wait_for(
            lambda: any("terraform-provider-random" in c for _, c in processes_in(workspaces)),
            timeout=180,
            interval=0.2,
            what="the leader's apply with its provider plugin",
        )
        leader = holder(kubectl)
        proxy.freeze()  # the leader's node loses its network mid-apply
        cut = time.monotonic()
        tools_gone = wait_for(
            lambda: (not processes_in(workspaces)) and time.monotonic() - cut,
            timeout=60,
            interval=0.1,
            what="the partitioned leader to stop its tools",
        )
        passed = wait_for(
            lambda: (holder(kubectl) not in (None, leader)) and time.monotonic() - cut,
            timeout=60,
            interval=0.1,
            what="the lease to pass to the standby",
        )
        print(f"partitioned leader's tools gone {tools_gone:.1f}s after the cut; lease passed after {passed:.1f}s")
        assert tools_gone < passed  # nothing of the old leader ran once the standby could take over
        assert "leadership lost" in first.log_text()
        sr = wait_ready(kubectl, name, env, timeout=300)  # the new leader finishes the request
        assert "StateLockRecovered" in json.dumps(get(kubectl, "events", "-n", env) or {})
        assert sr["status"]["failures"] == 0
        assert "leading" in role(second)
        proxy.thaw()  # the network is back: the former leader sees the new one and stands by
        wait_for(lambda: "standing by" in role(first), timeout=30, what="the former leader to stand by")
        assert first.proc is not None
        assert first.proc.poll() is None  # still running, ready to take over in turn
    finally:
        proxy.close()
    kubectl("delete", "environment", env, "--wait=true", "--timeout=180s")
