"""Test fixtures: one real control plane and one operator process per session, logs on failure.

Integration and e2e tests run against a real kube-apiserver + etcd (+ kube-controller-manager)
started here, or against the cluster named by BLACKTOP_TEST_KUBECONFIG. A failing test gets the
tail of the apiserver and operator logs appended to its report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blacktop.kube.client import KubeClient
from helpers import (
    DEVELOPERS,
    REPO,
    Kubectl,
    OperatorProcess,
    install_blacktop,
    try_apply,
    unique,
    wait_for,
    webhook_urls,
)

# name -> callable returning a log tail; filled by session fixtures, read when a test fails.
_LOG_SOURCES: dict[str, Callable[[], str]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)  # read by fixtures that act on failure (screenshots)
    if report.failed and _LOG_SOURCES and item.get_closest_marker("unit") is None:
        for name, tail in list(_LOG_SOURCES.items()):
            try:
                report.sections.append((f"{name} log (tail)", tail()))
            except Exception as exc:  # a broken log source must not hide the real failure
                report.sections.append((f"{name} log (tail)", f"could not read: {exc}"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The cluster for the whole session: control plane and a node (started once; ~10 s)."""
    external = os.environ.get("BLACKTOP_TEST_KUBECONFIG")
    if external:

        class _External:
            kubeconfig = Path(external)

            def logs_tail(self, lines: int = 60) -> str:
                return "(external cluster: no logs)"

        yield _External()
        return
    from blacktop.localcluster import LocalCluster, images

    # With a node: Pods run (the demo-app image is there for them), Services route, webhooks are
    # called through their Service.
    with LocalCluster(tmp_path_factory.mktemp("cluster"), node=True, images=[images.demo_app_image()]) as local:
        _LOG_SOURCES["control plane"] = local.logs_tail
        OperatorProcess.cluster_env = {"BLACKTOP_WEBHOOK_CLIENT_CA": str(local.webhook_client_ca)}
        yield local
        OperatorProcess.cluster_env = {}
        _LOG_SOURCES.pop("control plane", None)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Any) -> Path:
    path: Path = cluster.kubeconfig
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)


@pytest.fixture(scope="session")
def installed(kubeconfig: Path) -> Path:
    """CRDs, cluster RBAC and the operator namespace, installed once like `blacktop install` does."""
    install_blacktop(kubeconfig)
    return kubeconfig


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[KubeClient]:
    client = KubeClient.from_kubeconfig(kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def modules_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped modules plus the test fixtures' (forbidden ones among them), as the operator sees them."""
    root = tmp_path_factory.mktemp("modules")
    for source in (REPO / "terraform-modules", REPO / "tests" / "fixtures" / "modules"):
        for module in source.iterdir():
            if module.is_dir():
                shutil.copytree(module, root / module.name)
    return root


@pytest.fixture(scope="session")
def workspace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session operator keeps request workspaces (tests look at their permissions)."""
    return tmp_path_factory.mktemp("workspaces")


@pytest.fixture(scope="session")
def operator(
    installed: Path, modules_root: Path, workspace_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a real process, shared by the session (tests that kill it start their own)."""
    log_file = tmp_path_factory.mktemp("operator") / "operator.log"
    # The session operator owns the admission webhook configuration; it removes it when it stops.
    proc = OperatorProcess(
        installed,
        log_file,
        env={
            "BLACKTOP_MODULES_ROOT": str(modules_root),
            "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "true",
            "BLACKTOP_WORKSPACE_ROOT": str(workspace_root),
            "BLACKTOP_RESERVED_NAMESPACES": "reserved-by-platform-*",
        },
    )
    _LOG_SOURCES["operator"] = proc.log_tail
    proc.start()
    # Admission is live only once the operator has pointed the webhook configuration at itself.
    wait_for(
        lambda: (urls := webhook_urls(Kubectl(installed))) and all(f":{proc.webhook_port}/" in url for url in urls),
        timeout=60,
        what="the session operator's webhook configuration",
    )
    yield proc
    proc.stop()
    _LOG_SOURCES.pop("operator", None)


@pytest.fixture
def developers_may_create_environments(kubectl: Kubectl, installed: Path) -> Iterator[str]:
    """RBAC lets the DEVELOPERS group create and change any environment, so the webhook is what decides."""
    name = unique("gr-env-creators")
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": ["platform.blacktop.dev"], "resources": ["environments"], "verbs": ["*"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": DEVELOPERS}],
    }
    for obj in (role, binding):
        assert try_apply(kubectl, obj).returncode == 0
    yield DEVELOPERS
    kubectl("delete", "clusterrolebinding", name, "--ignore-not-found")
    kubectl("delete", "clusterrole", name, "--ignore-not-found")
