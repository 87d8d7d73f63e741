"""The Helm chart installed into a real control plane, and the operator running with nothing but the
chart's ServiceAccount: its RBAC is sufficient to provision and destroy, and Argo CD's health check
reads the real status objects correctly.

These tests use a control plane of their own: the chart installs cluster-wide objects (CRDs, the
environment editor roles) that the session's `blacktop install` already owns, and the operator under
test must be the only operator reconciling, or the proof would prove nothing.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from blacktop.toolbox import cache_dir
from chart_support import CHART, JSON, argocd_health, helm
from helpers import (
    Kubectl,
    OperatorProcess,
    apply_json,
    condition,
    environment_body,
    free_port,
    get,
    service_account_kubeconfig,
    service_request,
    unique,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chart_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    external = os.environ.get("BLACKTOP_TEST_KUBECONFIG")
    if external:
        yield Path(external)
        return
    from blacktop.localcluster import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("chart-cluster")) as local:
        yield local.kubeconfig


@pytest.fixture(scope="module")
def admin(chart_kubeconfig: Path) -> Kubectl:
    return Kubectl(chart_kubeconfig)


def ready(obj: JSON | None, ctype: str = "Ready") -> bool:
    """Whether ``obj`` has condition ``ctype`` True."""
    return (condition(obj, ctype) or {}).get("status") == "True"


def install_chart(release: str, namespace: str, kubeconfig: Path, *settings: str) -> None:
    """`helm install` the chart as ``release`` into a new ``namespace`` with ``--set`` each of ``settings``."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    helm("install", release, str(CHART), "--namespace", namespace, "--create-namespace", *sets, kubeconfig=kubeconfig)


def manifest_objects(release: str, namespace: str, kubeconfig: Path) -> list[JSON]:
    out = helm("get", "manifest", release, "--namespace", namespace, kubeconfig=kubeconfig).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _ref(obj: JSON) -> list[str]:
    """`kubectl get` arguments of an object."""
    kind = obj["kind"].lower()
    group = obj["apiVersion"].rpartition("/")[0]
    args = [f"{kind}.{group}" if group else kind, obj["metadata"]["name"]]
    if obj["metadata"].get("namespace"):
        args += ["-n", obj["metadata"]["namespace"]]
    return args


def install_monitoring_crds(admin: Kubectl) -> None:
    """The real prometheus-operator CRDs the chart's ServiceMonitor and PrometheusRule need (this
    control plane is the chart tests' own, so no other test sees them)."""
    folder = cache_dir() / "crds" / "monitoring.coreos.com"
    files = [folder / f"monitoring.coreos.com_{plural}.yaml" for plural in ("servicemonitors", "prometheusrules")]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"missing {missing}: run `make tools` (prometheus-operator-crds)"
    for file in files:
        admin("apply", "--server-side", "-f", str(file))
    admin("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    admin("wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com", "--timeout=60s")


def test_helm_install_creates_every_object(admin: Kubectl, chart_kubeconfig: Path) -> None:
    release, namespace = unique("bt"), unique("blacktop")
    install_monitoring_crds(admin)
    # No --wait: this control plane has no nodes, so the operator pod stays Pending by design.
    install_chart(
        release,
        namespace,
        chart_kubeconfig,
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
    )
    try:
        objects = manifest_objects(release, namespace, chart_kubeconfig)
        kinds = {o["kind"] for o in objects}
        expected = {"Deployment", "ServiceAccount", "ClusterRole", "Role", "ValidatingWebhookConfiguration"}
        expected.add("ServiceMonitor")
        if (CHART / "files" / "prometheus-rules.yaml").exists():  # shipped by the metrics work
            expected.add("PrometheusRule")
        assert expected <= kinds
        for obj in objects:
            assert get(admin, *_ref(obj)) is not None, f"{obj['kind']} {obj['metadata']['name']} was not created"
        # The CRDs come from the chart's crds/ folder (Helm installs them first, never deletes them).
        for plural in ("environments", "goldenpaths", "servicerequests", "guardrailpolicies"):
            crd = get(admin, "crd", f"{plural}.platform.blacktop.dev")
            assert crd is not None
            established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
            assert established
            assert established[0]["status"] == "True"
        status = json.loads(
            helm("status", release, "--namespace", namespace, "-o", "json", kubeconfig=chart_kubeconfig).stdout
        )
        assert status["info"]["status"] == "deployed"
        # The Deployment controller took over: a ReplicaSet for the operator exists.
        assert json.loads(admin("get", "replicasets", "-n", namespace, "-o", "json").stdout)["items"]
        # An upgrade keeps the generated webhook certificate (and the caBundle matching it).
        secret_name = f"{release}-blacktop-webhook-tls"
        before = get(admin, "secret", secret_name, "-n", namespace)
        assert before is not None
        helm("upgrade", release, str(CHART), "--namespace", namespace, kubeconfig=chart_kubeconfig)
        after = get(admin, "secret", secret_name, "-n", namespace)
        assert after is not None
        assert after["data"] == before["data"]
        config = get(admin, "validatingwebhookconfiguration", f"{release}-blacktop")
        assert config is not None
        assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {before["data"]["ca.crt"]}
    finally:
        helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=chart_kubeconfig)
    assert get(admin, "clusterrole", f"{release}-blacktop") is None
    assert get(admin, "validatingwebhookconfiguration", f"{release}-blacktop") is None
    admin("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def chart_release(admin: Kubectl, chart_kubeconfig: Path) -> Iterator[tuple[str, str]]:
    """The chart with the example catalog and no webhook (no pod runs here to serve it), and the
    operator Deployment scaled to 0: the operator under test runs as a local process instead."""
    release, namespace = unique("bt"), unique("blacktop")
    install_chart(
        release, namespace, chart_kubeconfig, "webhook.enabled=false", "catalog.enabled=true", "replicaCount=0"
    )
    yield release, namespace
    helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=chart_kubeconfig)
    admin("delete", "namespace", namespace, "--wait=false")


def test_operator_provisions_with_the_chart_service_account_and_argocd_reads_its_health(
    admin: Kubectl,
    chart_kubeconfig: Path,
    chart_release: tuple[str, str],
    modules_root: Path,
    tmp_path: Path,
) -> None:
    release, namespace = chart_release
    service_account = f"{release}-blacktop"
    env_name, sr_name, bad_name = unique("rbac-env"), unique("svc"), unique("bad")
    healths: list[tuple[str, JSON, str]] = []  # (what, object, expected Argo CD health)

    # An Environment created before any operator runs: no status yet.
    apply_json(admin, environment_body(env_name, "payments"))
    fresh = get(admin, "environment", env_name)
    assert fresh is not None
    assert not fresh.get("status")
    healths.append(("environment without status", fresh, "Progressing"))

    # A token of the chart's ServiceAccount from the TokenRequest API, and a kubeconfig with only it.
    token = admin("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    kubeconfig = service_account_kubeconfig(chart_kubeconfig, token, tmp_path / "operator.kubeconfig")
    as_operator = Kubectl(kubeconfig)
    whoami = json.loads(as_operator("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{service_account}"
    # Least privilege, seen from the outside: no secrets outside the release namespace beyond get.
    assert as_operator("auth", "can-i", "list", "secrets", "-n", "default", check=False).stdout.strip() == "no"
    assert as_operator("auth", "can-i", "create", "clusterroles", check=False).stdout.strip() == "no"
    assert as_operator("auth", "can-i", "list", "secrets", "-n", namespace).stdout.strip() == "yes"

    operator = OperatorProcess(
        kubeconfig,
        tmp_path / "operator.log",
        env={
            "BLACKTOP_NAMESPACE": namespace,
            "BLACKTOP_MODULES_ROOT": str(modules_root),
            # The operator may not touch webhook configurations with the chart's RBAC (the chart owns it).
            "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "false",
            "BLACKTOP_WEBHOOK_PORT": str(free_port()),
        },
    )
    operator.start()
    short_lived = unique("ttl-env")
    try:
        # An environment with a TTL: the operator deletes it when the TTL runs out.
        apply_json(admin, environment_body(short_lived, "payments", ttl="10s"))
        env = wait_for(
            lambda: (e := get(admin, "environment", env_name)) and ready(e) and e, timeout=60, what="env Ready"
        )
        healths.append(("environment Ready", env, "Healthy"))
        behind = json.loads(json.dumps(env))
        behind["metadata"]["generation"] += 1
        healths.append(("environment with a generation not observed yet", behind, "Progressing"))
        # What the environment implies, created with the operator's own rights (incl. the RoleBinding
        # to the aggregated editor role, which needs `bind`).
        assert get(admin, "rolebinding", "blacktop-environment-editors", "-n", env_name) is not None
        assert get(admin, "resourcequota", "blacktop-quota", "-n", env_name) is not None
        assert get(admin, "networkpolicy", "blacktop-isolation", "-n", env_name) is not None
        # Issue 11, case 12: Secrets, ConfigMaps and namespace deletion are nowhere cluster-wide; inside an
        # environment the operator works through the RoleBinding it made there for itself.
        for denied in (
            ("get", "secrets", "-n", "default"),
            ("patch", "secrets", "-n", "kube-system"),
            ("create", "configmaps", "-n", "default"),
            ("delete", "namespaces"),
        ):
            assert as_operator("auth", "can-i", *denied, check=False).stdout.strip() == "no", denied
        for allowed in (("get", "secrets"), ("create", "configmaps"), ("patch", "resourcequotas")):
            assert as_operator("auth", "can-i", *allowed, "-n", env_name).stdout.strip() == "yes", allowed
        binding = get(admin, "rolebinding", "blacktop-operator", "-n", env_name)
        assert binding is not None
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
        # Switching isolation off removes the NetworkPolicy (the operator deletes it).
        admin("patch", "environment", env_name, "--type=merge", "-p", '{"spec":{"networkPolicy":{"isolation":"Open"}}}')
        wait_for(
            lambda: get(admin, "networkpolicy", "blacktop-isolation", "-n", env_name) is None or None,
            timeout=60,
            what="the NetworkPolicy to be removed",
        )

        golden = wait_for(lambda: (g := get(admin, "goldenpath", "tiny")) and ready(g) and g, timeout=60, what="tiny")
        healths.append(("golden path Ready", golden, "Healthy"))

        request = service_request(sr_name, env_name, "tiny", size="small")
        apply_json(admin, request)
        seen: list[JSON] = []

        def provisioned() -> JSON | None:
            obj = get(admin, "servicerequest", sr_name, "-n", env_name)
            if obj and obj.get("status"):
                seen.append(obj)
            return obj if ready(obj) else None

        done = wait_for(provisioned, timeout=180, interval=0.1, what="the ServiceRequest to be provisioned")
        healths.append(("service request Ready", done, "Healthy"))
        reconciling = [
            o
            for o in seen
            # (a status may hold only the scorecard's history for a moment, before the first conditions)
            if any(c["type"] == "Reconciling" and c["status"] == "True" for c in o["status"].get("conditions") or [])
        ]
        healths += [("service request Reconciling", o, "Progressing") for o in reconciling[:3]]
        connection = get(admin, "secret", f"{sr_name}-connection", "-n", env_name)
        assert connection is not None
        assert base64.b64decode(connection["data"]["endpoint"]).decode() == f"tiny://{sr_name}.small.svc:8080"
        state_secret = f"tfstate-default-{done['metadata']['uid']}"
        assert get(admin, "secret", state_secret, "-n", namespace) is not None
        # The scorecard, computed with the same rights: the objects it creates, its ledger in the
        # release namespace, and the request's history.
        wait_for(
            lambda: ((get(admin, "platformscorecard", "change-frequency") or {}).get("status") or {}).get("value"),
            timeout=60,
            what="the scorecard to count the provisioned request",
        )
        assert get(admin, "configmap", "blacktop-scorecard-ledger", "-n", namespace) is not None
        assert (get(admin, "servicerequest", sr_name, "-n", env_name) or {})["status"]["history"]["changes"]

        # A request that cannot work: Stalled, Ready=False with a failure reason.
        bad = json.loads(json.dumps(request))
        bad["metadata"]["name"] = bad_name
        bad["spec"]["parameters"] = {"size": "enormous"}
        apply_json(admin, bad)
        failed = wait_for(
            lambda: (o := get(admin, "servicerequest", bad_name, "-n", env_name)) and ready(o, "Stalled") and o,
            timeout=60,
            what="the invalid ServiceRequest to stall",
        )
        healths.append(("service request Stalled", failed, "Degraded"))

        # Destroy with the same credentials: OpenTofu deletes through the state backend, the state goes.
        admin("delete", "servicerequest", sr_name, bad_name, "-n", env_name, "--timeout=180s")
        assert get(admin, "secret", state_secret, "-n", namespace) is None
        admin("delete", "environment", env_name, "--timeout=120s")
        wait_for(lambda: get(admin, "namespace", env_name) is None or None, timeout=60, what="namespace deletion")
        wait_for(
            lambda: get(admin, "environment", short_lived) is None or None,
            timeout=60,
            what="the environment with a 10s TTL to expire",
        )
    except AssertionError as failure:
        # This operator is not the session's, so conftest does not attach its log: do it here.
        raise AssertionError(f"{failure}\n--- operator log (tail) ---\n{operator.log_tail(60)}") from None
    finally:
        admin("delete", "environment", env_name, short_lived, "--ignore-not-found", "--timeout=120s", check=False)
        # The catalog outlives `helm uninstall` (resource-policy keep); delete it while the operator
        # still runs to release its finalizers.
        admin("delete", "goldenpath", "tiny", "postgres-database", "--ignore-not-found", "--timeout=60s", check=False)
        operator.stop()

    # Nothing the operator tried was refused.
    log = operator.log_text()
    forbidden = [line for line in log.splitlines() if "forbidden" in line.lower() or " 403" in line]
    assert not forbidden, "the chart's RBAC refused calls:\n" + "\n".join(forbidden[:20])

    # Argo CD's health check on the real objects.
    results = {what: (argocd_health(obj), expected) for what, obj, expected in healths}
    for what, (health, _) in results.items():
        print(f"argocd health of {what}: {health['status']} ({health['message']})")
    wrong = {what: health for what, (health, expected) in results.items() if health["status"] != expected}
    assert not wrong, f"health.lua disagrees on: {json.dumps(wrong, indent=2)}"
    assert {expected for _, (_, expected) in results.items()} == {"Healthy", "Progressing", "Degraded"}
