"""The Helm chart, rendered by the pinned helm: lint, the contracts it implements, least-privilege RBAC,
and a server-side dry run of what it renders against the real apiserver."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from blacktop.api.kinds import ALL_KINDS
from blacktop.builders import webhook as webhook_builder
from blacktop.builders.rbac import cluster_rbac, operator_environment_cluster_role
from blacktop.kube.resources import all_resources
from chart_support import CHART, JSON, find, helm, render
from helpers import Kubectl, scratch_namespace

pytestmark = pytest.mark.integration

NAMESPACE = "blacktop-system"


def _ca_pem() -> str:
    import tempfile

    from blacktop.localcluster.pki import CertificateAuthority

    with tempfile.TemporaryDirectory() as folder:
        return CertificateAuthority(Path(folder), name="existing-webhook-ca").pem.decode()


CA_PEM = _ca_pem()

# Every option that changes what is rendered, set away from its default.
NON_DEFAULT: dict[str, Any] = {
    "fullnameOverride": "platform-operator",
    "image": {"repository": "registry.example.com/blacktop", "digest": "sha256:" + "a" * 64},
    "serviceAccount": {"name": "blacktop-operator", "annotations": {"example.com/role": "operator"}},
    "rbac": {"monitoring": False},
    "catalog": {"enabled": True},
    "config": {"logVerbose": True, "maxConcurrentRuns": 4, "platformAdminGroups": ["platform"]},
    "extraEnv": [{"name": "BLACKTOP_TTL_CHECK_SECONDS", "value": "10"}],
    "modules": {
        "configMaps": {"shared": "shared-modules"},
        "inline": {"hello": {"main.tf": 'output "greeting" {\n  value = "hello"\n}\n'}},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"namespace": "default"},
    },
    "webhook": {
        "manageConfig": True,
        "failurePolicy": "Ignore",
        "objectSelector": {"matchLabels": {"blacktop.example.com/validated": "true"}},
        "certificate": {"mode": "secret", "existingSecret": "my-webhook-tls", "caBundle": CA_PEM},
    },
    "podAnnotations": {"example.com/scrape": "true"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "portal": {"enabled": True, "port": 8099, "service": {"port": 8443}},
}
CERT_MANAGER: dict[str, Any] = {"webhook": {"certificate": {"mode": "certManager"}}, "replicaCount": 0}
NO_WEBHOOK: dict[str, Any] = {"webhook": {"enabled": False}, "environmentRBAC": {"create": False}}
PLURALS = {
    "/validate-environment": "environments",
    "/validate-feedback": "feedbacks",
    "/validate-goldenpath": "goldenpaths",
    "/validate-guardrailpolicy": "guardrailpolicies",
    "/validate-servicerequest": "servicerequests",
}
VARIANTS = {"default": {}, "non-default": NON_DEFAULT, "cert-manager": CERT_MANAGER, "no-webhook": NO_WEBHOOK}


@pytest.fixture(scope="module")
def values_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("values")
    files = {}
    for name, values in VARIANTS.items():
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(values))
    return files


def rendered(values: Path, namespace: str = NAMESPACE, *, include_crds: bool = False) -> list[JSON]:
    return render("blacktop", namespace, ["-f", str(values)], include_crds=include_crds)


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_passes(values_files: dict[str, Path], variant: str) -> None:
    out = helm("lint", str(CHART), "--strict", "-f", str(values_files[variant])).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=-1", "replicaCount"),
        ("leaderElection.enabled=false", "leaderElection"),
        ("webhook.certificate.mode=self", "mode"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
    ],
)
def test_bad_values_are_refused_with_a_clear_error(setting: str, message: str) -> None:
    result = helm("template", "blacktop", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_secret_mode_needs_the_secret_name() -> None:
    result = helm("template", "blacktop", str(CHART), "--set", "webhook.certificate.mode=secret", check=False)
    assert result.returncode != 0
    assert "webhook.certificate.existingSecret is required" in result.stderr


def test_default_render_has_every_part(values_files: dict[str, Path]) -> None:
    objects = rendered(values_files["default"], include_crds=True)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == sorted(
        {
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "Secret",
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration",
        }
        # The dashboard ConfigMap appears once the metrics work ships files/dashboard.json.
        | ({"ConfigMap"} if (CHART / "files" / "dashboard.json").exists() else set())
    )
    assert len(find(objects, "CustomResourceDefinition")) == len(ALL_KINDS)
    # Nothing but the cluster-scoped kinds escapes the release namespace.
    for obj in objects:
        if obj["kind"] not in {
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration",
        }:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def _rbac_rules(objects: list[JSON]) -> list[tuple[str, JSON]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", rule)
        for o in objects
        if o["kind"] in ("ClusterRole", "Role")
        for rule in o.get("rules") or []
    ]


@pytest.mark.parametrize("variant", ["default", "non-default"])
def test_rbac_has_no_wildcards(values_files: dict[str, Path], variant: str) -> None:
    """The operator's roles, listed rule by rule: any `*` fails, as does a resource the operator
    does not know (a typo would silently grant nothing)."""
    objects = rendered(values_files[variant])
    rules = _rbac_rules(objects)
    assert len(rules) >= 10
    known = {r.plural for r in all_resources()}
    known |= {f"{p}/{sub}" for p in known for sub in ("status", "finalizers")}
    for where, rule in rules:
        print(where, json.dumps(rule, sort_keys=True))  # the listing, in the test's output
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            for value in rule.get(field) or []:
                assert "*" not in value, f"{where}: wildcard in {field}: {rule}"
        assert "nonResourceURLs" not in rule, f"{where}: {rule}"
        assert set(rule["resources"]) <= known, f"{where}: unknown resources in {rule}"
        assert rule["verbs"], f"{where}: empty verbs"


def test_rbac_grants_the_webhook_configuration_only_when_the_operator_manages_it(
    values_files: dict[str, Path],
) -> None:
    def grants(objects: list[JSON]) -> bool:
        return any("validatingwebhookconfigurations" in r["resources"] for _, r in _rbac_rules(objects))

    assert not grants(rendered(values_files["default"]))
    assert grants(rendered(values_files["non-default"]))


def _grants(role: JSON) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_case12_chart_rbac_grants_only_what_the_code_calls(values_files: dict[str, Path]) -> None:
    """Issue 11, case 12: no cluster-wide Secret, ConfigMap or namespace-delete rights; what the operator
    does inside environments comes from a ClusterRole it binds there; each cluster-wide rule says why."""
    objects = rendered(values_files["default"])
    (cluster_role,) = [o for o in find(objects, "ClusterRole") if o["metadata"]["name"] == "blacktop"]
    cluster_wide = _grants(cluster_role)
    assert not [grant for grant in cluster_wide if grant[1] in ("secrets", "configmaps", "leases")], cluster_wide
    assert ("", "namespaces", "delete") not in cluster_wide
    for kind in ("resourcequotas", "limitranges", "networkpolicies"):
        assert {v for _, r, v in cluster_wide if r == kind} == {"list", "watch"}, kind  # watched, written per namespace
    assert not {v for _, r, v in cluster_wide if r in ("podmonitors", "prometheusrules")}
    (role,) = find(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert {r for rule in role["rules"] for r in rule["resources"]} >= {"secrets", "leases"}
    # Binding is allowed for the two roles the operator binds, and no other.
    (bind,) = [rule for rule in cluster_role["rules"] if "bind" in rule["verbs"]]
    assert bind["resourceNames"] == ["blacktop-environment-editor", "blacktop-operator-environment"]
    # Inside an environment's namespace: exactly what the builders say (the operator binds this role there).
    (inside,) = [o for o in find(objects, "ClusterRole") if o["metadata"]["name"] == "blacktop-operator-environment"]
    assert inside["rules"] == operator_environment_cluster_role()["rules"]
    # Every rule of the operator's roles is explained where it is written.
    template = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    rule_lines = [i for i, line in enumerate(template) if line.strip().startswith("- apiGroups:")]
    assert len(rule_lines) >= 12
    for index in rule_lines:
        above = template[index - 1].strip()
        assert above.startswith(("#", "{{-")), f"rule at line {index + 1} of rbac.yaml has no comment: {above}"


def test_environment_rbac_is_what_blacktop_install_applies(values_files: dict[str, Path]) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered(values_files["default"])}
    for expected in cluster_rbac():
        chart = objects[(expected["kind"], expected["metadata"]["name"])]
        for field in ("rules", "aggregationRule", "roleRef", "subjects"):
            assert chart.get(field) == expected.get(field), f"{expected['metadata']['name']}.{field}"
        aggregation = {k: v for k, v in expected["metadata"]["labels"].items() if "aggregate" in k}
        assert aggregation.items() <= chart["metadata"]["labels"].items()


def _env(container: JSON) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _operator(objects: list[JSON]) -> tuple[JSON, JSON, dict[str, str]]:
    """The operator Deployment's pod spec, its one container and that container's environment."""
    (deployment,) = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container, _env(container)


def test_deployment_follows_the_contracts(values_files: dict[str, Path]) -> None:
    objects = rendered(values_files["default"])
    (deployment,) = find(objects, "Deployment")
    spec = deployment["spec"]
    # Two replicas, one leading: an upgrade brings the new pod up before an old one goes.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (budget,) = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert env["BLACKTOP_WEBHOOK_MANAGE_CONFIG"] == "false"
    assert env["BLACKTOP_NAMESPACE"] == NAMESPACE
    assert env["BLACKTOP_HEALTH_PORT"] == "8081"
    assert env["BLACKTOP_METRICS_PORT"] == "8080"
    assert env["BLACKTOP_WEBHOOK_PORT"] == "9443"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}
    assert env["BLACKTOP_LEADER_ELECTION"] == "true"
    assert float(env["BLACKTOP_LEADER_RENEW_DEADLINE_SECONDS"]) < float(env["BLACKTOP_LEADER_LEASE_SECONDS"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # Restricted pod security.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    # Everything the operator writes is on an emptyDir; the webhook certificate is mounted where it looks.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env["BLACKTOP_WORKSPACE_ROOT"].startswith("/var/lib/blacktop/")
    assert "emptyDir" in volumes[mounts["/var/lib/blacktop"]]
    assert volumes[mounts[env["BLACKTOP_WEBHOOK_CERT_DIR"]]]["secret"]["secretName"] == "blacktop-webhook-tls"


def test_non_default_values_reach_the_deployment(values_files: dict[str, Path]) -> None:
    objects = rendered(values_files["non-default"])
    pod, container, env = _operator(objects)
    assert container["image"] == "registry.example.com/blacktop@sha256:" + "a" * 64
    assert container["args"] == ["run", "--verbose"]
    assert env["BLACKTOP_MAX_CONCURRENT_RUNS"] == "4"
    assert env["BLACKTOP_PLATFORM_ADMIN_GROUPS"] == "platform"
    assert env["BLACKTOP_TTL_CHECK_SECONDS"] == "10"
    assert env["BLACKTOP_WEBHOOK_MANAGE_CONFIG"] == "true"
    assert pod["serviceAccountName"] == "blacktop-operator"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/opt/blacktop/modules/hello", "/opt/blacktop/modules/shared"} <= mounts
    (module,) = [o for o in find(objects, "ConfigMap") if "hello" in o["metadata"]["name"]]
    assert "greeting" in module["data"]["main.tf"]
    assert sorted(g["metadata"]["name"] for g in find(objects, "GoldenPath")) == [
        "postgres-database",
        "tiny",
        "web-service",
    ]


def _portal_rules(objects: list[JSON]) -> list[JSON]:
    return [r for _, r in _rbac_rules(objects) if set(r["resources"]) & {"tokenreviews", "subjectaccessreviews"}]


def test_the_portal_is_off_by_default_and_behind_its_service_when_on(values_files: dict[str, Path]) -> None:
    default = rendered(values_files["default"])
    (container,) = find(default, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "BLACKTOP_PORTAL_PORT" not in _env(container)
    assert not [s for s in find(default, "Service") if s["metadata"]["name"].endswith("-portal")]
    assert _portal_rules(default) == []

    objects = rendered(values_files["non-default"])
    (container,) = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    # Listening on the pod's address is only allowed with sign-in (the operator refuses auth=none there).
    assert (env["BLACKTOP_PORTAL_PORT"], env["BLACKTOP_PORTAL_ADDRESS"], env["BLACKTOP_PORTAL_AUTH"]) == (
        "8099",
        "0.0.0.0",
        "token",
    )
    assert {"name": "portal", "containerPort": 8099, "protocol": "TCP"} in container["ports"]
    (service,) = find(objects, "Service", "platform-operator-portal")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8443, "targetPort": "portal", "protocol": "TCP"}]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    assert sorted((r["apiGroups"][0], r["resources"][0], tuple(r["verbs"])) for r in _portal_rules(objects)) == [
        ("authentication.k8s.io", "tokenreviews", ("create",)),
        ("authorization.k8s.io", "subjectaccessreviews", ("create",)),
    ]


def test_webhook_configuration_and_generated_certificate(values_files: dict[str, Path]) -> None:
    objects = rendered(values_files["default"])
    (config,) = find(objects, "ValidatingWebhookConfiguration")
    (secret,) = find(objects, "Secret")
    webhooks = {w["clientConfig"]["service"]["path"]: w for w in config["webhooks"]}
    assert sorted(webhooks) == [
        "/validate-environment",
        "/validate-feedback",
        "/validate-goldenpath",
        "/validate-guardrailpolicy",
        "/validate-servicerequest",
    ]
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    for path, webhook in webhooks.items():
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["timeoutSeconds"] == 5
        assert webhook["sideEffects"] == "NoneOnDryRun"
        assert webhook["clientConfig"]["service"] == {
            "name": "blacktop-webhook",
            "namespace": NAMESPACE,
            "path": path,
            "port": 443,
        }
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == ca_pem
        (rule,) = webhook["rules"]
        assert rule["apiGroups"] == ["platform.blacktop.dev"]
        # Environments (the team boundary) and ServiceRequests (a source others consume) on DELETE too.
        deletes = ["DELETE"] if path in ("/validate-environment", "/validate-servicerequest") else []
        assert rule["operations"] == ["CREATE", "UPDATE", *deletes]
        assert rule["resources"] == [PLURALS[path]]
        if rule["scope"] == "Namespaced":
            (expression,) = webhook["namespaceSelector"]["matchExpressions"]
            assert expression["operator"] == "NotIn"
            assert {"kube-system", "kube-public", "kube-node-lease", NAMESPACE} <= set(expression["values"])
        else:
            assert rule["scope"] == "Cluster"
            assert "namespaceSelector" not in webhook  # cluster-scoped objects have no namespace
    assert [w["rules"][0]["scope"] for w in config["webhooks"]].count("Namespaced") == 2
    # The mutating webhook (requested-by/approved-by stamps) is what the operator builds in local mode.
    (mutating,) = find(objects, "MutatingWebhookConfiguration")
    expected = webhook_builder.build_configuration(
        operator_namespace=NAMESPACE,
        service={"name": "blacktop-webhook", "namespace": NAMESPACE, "port": 443},
        ca_bundle=secret["data"]["ca.crt"],
        kind="MutatingWebhookConfiguration",
    )
    assert mutating["webhooks"] == expected["webhooks"]
    # The serving certificate is signed by that CA and names the Service.
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"blacktop-webhook.{NAMESPACE}.svc" in names


def test_webhook_certificate_from_a_secret_or_cert_manager(values_files: dict[str, Path]) -> None:
    objects = rendered(values_files["non-default"])
    assert not find(objects, "Secret")
    (config,) = find(objects, "ValidatingWebhookConfiguration")
    for webhook in config["webhooks"]:
        assert base64.b64decode(webhook["clientConfig"]["caBundle"]).decode() == CA_PEM
        assert webhook["objectSelector"] == NON_DEFAULT["webhook"]["objectSelector"]
        assert webhook["failurePolicy"] == "Ignore"
    (deployment,) = find(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == "my-webhook-tls"

    objects = rendered(values_files["cert-manager"])
    (certificate,) = find(objects, "Certificate")
    assert find(objects, "Issuer")
    (config,) = find(objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/blacktop-webhook"
    assert certificate["spec"]["secretName"] == "blacktop-webhook-tls"
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]


def test_monitoring_files_are_included_when_present(tmp_path: Path) -> None:
    """The metrics work ships files/prometheus-rules.yaml and files/dashboard.json; the templates
    pick them up verbatim when present (a copy of the chart with sample files proves it)."""
    chart = tmp_path / "blacktop"
    shutil.copytree(CHART, chart)
    rules = {"groups": [{"name": "blacktop", "rules": [{"alert": "BlacktopDown", "expr": "up == 0", "for": "5m"}]}]}
    (chart / "files" / "prometheus-rules.yaml").write_text("# sample\n" + yaml.safe_dump(rules))
    (chart / "files" / "dashboard.json").write_text(json.dumps({"title": "Blacktop", "panels": []}))
    args = ["--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"]
    out = helm("template", "blacktop", str(chart), "--namespace", NAMESPACE, *args).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    (rule,) = find(objects, "PrometheusRule")
    assert rule["spec"] == rules
    (dashboard,) = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == "blacktop-dashboard"]
    assert json.loads(dashboard["data"]["blacktop.json"])["title"] == "Blacktop"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = [s for s in find(objects, "Service") if s["metadata"]["name"] == "blacktop-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # Without the files, nothing half-empty is rendered.
    bare = tmp_path / "bare"
    shutil.copytree(CHART, bare)
    for name in ("prometheus-rules.yaml", "dashboard.json"):
        (bare / "files" / name).unlink(missing_ok=True)
    out = helm("template", "blacktop", str(bare), *args).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    assert not find(objects, "PrometheusRule")
    assert not [o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == "blacktop-dashboard"]


@pytest.fixture
def release_namespace(kubectl: Kubectl) -> Iterator[str]:
    with scratch_namespace(kubectl, "chart-dry") as name:
        yield name


def _served_groups(kubectl: Kubectl) -> set[str]:
    groups = {""}
    for line in kubectl("api-versions").stdout.split():
        groups.add(line.rpartition("/")[0])
    return groups


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_pass_a_server_side_dry_run(
    kubectl: Kubectl, installed: Path, values_files: dict[str, Path], release_namespace: str, variant: str
) -> None:
    objects = rendered(values_files[variant], release_namespace, include_crds=True)
    served = _served_groups(kubectl)
    # The local control plane has no Prometheus Operator or cert-manager: their objects cannot be
    # dry-run here (their shape is checked above); everything else is sent to the apiserver.
    unserved = [o for o in objects if o["apiVersion"].rpartition("/")[0] not in served]
    assert {o["apiVersion"].rpartition("/")[0] for o in unserved} <= {"monitoring.coreos.com", "cert-manager.io"}
    sent = [o for o in objects if o not in unserved]
    # The session operator manages its own webhook configurations `blacktop` (url clientConfig,
    # local mode); merging the chart's (service clientConfig) into it would set both. In a cluster only
    # one of them exists, so the chart's is checked under a name of its own.
    for obj in sent:
        if obj["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            obj["metadata"]["name"] = f"{obj['metadata']['name']}-{release_namespace}"
    # Namespaced objects of other namespaces (the dashboard ConfigMap in `default`) exist too.
    body = "\n---\n".join(yaml.safe_dump(o) for o in sent)
    out = kubectl("apply", "--dry-run=server", "-f", "-", input=body).stdout
    assert out.count("(server dry run)") == len(sent), out


def test_case11_the_platform_can_make_the_webhook_trust_only_the_apiserver() -> None:
    """Issue 11, case 11 (chart side): webhook.clientAuth mounts the CA of the apiserver's webhook
    client certificate and tells the operator to accept only it; reserved names and guardrail limits
    reach the operator; the developer role is bound only while the webhook enforces the team boundary."""
    objects = render(
        extra=[
            "--set-string",
            f"webhook.clientAuth.caBundle={CA_PEM}",
            "--set",
            "webhook.clientAuth.allowedNames={apiserver-webhooks}",
            "--set",
            "config.reservedNamespaces={platform-*,shared}",
        ]
    )
    (config_map,) = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"].endswith("webhook-client-ca")]
    assert config_map["data"]["ca.crt"].strip() == CA_PEM.strip()
    pod, container, env = _operator(objects)
    assert env["BLACKTOP_WEBHOOK_CLIENT_CA"] == "/etc/blacktop/webhook-client/ca.crt"
    assert env["BLACKTOP_WEBHOOK_CLIENT_NAMES"] == "apiserver-webhooks"
    assert env["BLACKTOP_RESERVED_NAMESPACES"] == "platform-*,shared"
    assert env["BLACKTOP_CEL_COST_LIMIT"] == "10000000"
    assert env["BLACKTOP_GUARDRAIL_TIMEOUT_SECONDS"] == "2"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/blacktop/webhook-client"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert find(objects, "ClusterRoleBinding", "blacktop-environment-developer")
    # Without client auth nothing is mounted; without the webhook nobody is bound to self-serve Environments.
    plain = render()
    assert "BLACKTOP_WEBHOOK_CLIENT_CA" not in _operator(plain)[2]
    assert not find(
        render(extra=["--set", "webhook.enabled=false"]), "ClusterRoleBinding", "blacktop-environment-developer"
    )
