"""The request builder: a filled-in form becomes a ServiceRequest manifest, checked like admission would.

The portal never creates anything: it renders the manifest to commit (or to ``kubectl apply``)
and asks :func:`blacktop.controllers.admission.decide_service_request` — the very function the
webhook calls — what ``kubectl apply`` would answer, with the operator's cached view of the
environment, its requests, the golden paths and the policies, and with the visitor's identity
when they signed in. So the form shows admission's own words: the parameter schema's errors,
guardrail denials and warnings, the team boundary. The estimated cost comes from the same
variables the guardrails see (``cost.monthly``, ``cost.environmentMonthly``, ``cost.budget``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from blacktop.api.common import DNS_SUBDOMAIN
from blacktop.api.kinds import API_VERSION
from blacktop.builders import parameters
from blacktop.config import Settings
from blacktop.controllers.admission import decide_service_request, spec_unchanged
from blacktop.controllers.goldenpath import schema_problem
from blacktop.guardrails.context import request_cost_cents, request_variables
from blacktop.guardrails.engine import compile_active
from blacktop.portal.schema import FIELD_PREFIX, form_parameters
from blacktop.portal.state import Snapshot

JSON = dict[str, Any]
NAME, ENVIRONMENT, GENERAL = "name", "environment", ""
# The apiserver's own words for a bad object name (k8s.io/apimachinery validation), so the form says
# what `kubectl apply` would.
NAME_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_ERROR_FIELD = re.compile(r"^parameters\.([^.:\s]+)[.:]")
_REQUIRED = re.compile(r"^parameters: '([^']+)' is a required property")


@dataclass(frozen=True)
class Cost:
    """This request's monthly cost and what it does to the environment's budget."""

    monthly: float
    currency: str
    environment_before: float
    environment_after: float
    budget: float | None

    @property
    def percent_after(self) -> int | None:
        return round(100 * self.environment_after / self.budget) if self.budget else None

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.environment_after > self.budget


@dataclass
class Preview:
    """What the builder shows for one state of the form."""

    yaml: str = ""
    file_name: str = ""
    apply_line: str = ""
    dry_run_line: str = ""
    errors: dict[str, list[str]] = field(default_factory=dict)  # by form key; "" for the whole request
    denial: str | None = None  # admission's answer, whole, as kubectl would print it
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the form still needs before a manifest makes sense
    cost: Cost | None = None
    exists: bool = False
    unchanged: bool = False

    @property
    def admitted(self) -> bool:
        return bool(self.yaml) and self.denial is None and not self.errors

    def add(self, key: str, message: str) -> None:
        self.errors.setdefault(key, []).append(message)

    def as_json(self) -> JSON:
        return {
            "yaml": self.yaml,
            "fileName": self.file_name,
            "applyLine": self.apply_line,
            "dryRunLine": self.dry_run_line,
            "errors": self.errors,
            "denial": self.denial,
            "warnings": self.warnings,
            "missing": self.missing,
            "admitted": self.admitted,
            "exists": self.exists,
            "unchanged": self.unchanged,
            "cost": None
            if self.cost is None
            else {
                "monthly": f"{self.cost.monthly:.2f}",
                "currency": self.cost.currency,
                "before": f"{self.cost.environment_before:.2f}",
                "after": f"{self.cost.environment_after:.2f}",
                "budget": None if self.cost.budget is None else f"{self.cost.budget:.2f}",
                "percent": self.cost.percent_after,
                "over": self.cost.over_budget,
            },
        }


def manifest(name: str, namespace: str, golden_path: str, params: JSON) -> JSON:
    """The ServiceRequest to commit."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"goldenPath": golden_path, "parameters": params},
    }


def manifest_yaml(body: JSON) -> str:
    """The manifest as a file for a GitOps repository, with a comment saying where it goes."""
    meta = body["metadata"]
    header = (
        f"# Golden path {body['spec']['goldenPath']}, from the Blacktop portal.\n"
        f"# Commit as environments/{meta['namespace']}/{meta['name']}.yaml\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _assign(preview: Preview, errors: list[str]) -> None:
    """Put each schema error next to its field (the whole denial stays shown above the form)."""
    for error in errors:
        found = _ERROR_FIELD.match(error) or _REQUIRED.match(error)
        preview.add(FIELD_PREFIX + found.group(1) if found else GENERAL, error)


def _tier_problem(golden_path: JSON, env: JSON) -> str | None:
    tiers = [str(t) for t in (golden_path.get("spec") or {}).get("tiers") or []]
    tier = (env.get("spec") or {}).get("tier")
    if tiers and tier not in tiers:
        # The controller's TierNotAllowed message: the request would be admitted, then fail.
        return f"golden path {golden_path['metadata']['name']!r} is offered in tiers {', '.join(tiers)}, not in {tier}"
    return None


def preview(
    settings: Settings,
    snapshot: Snapshot,
    golden_path: str,
    form: Mapping[str, str],
    *,
    environments: set[str],
    userinfo: Mapping[str, Any] | None,
) -> Preview:
    """The builder's answer for ``form``; ``environments`` are those the visitor may create requests in."""
    result = Preview()
    golden = snapshot.golden_paths.get(golden_path)
    if golden is None:
        result.add(GENERAL, f"golden path {golden_path!r} does not exist (any more); pick one from the catalog")
        return result
    spec = golden.get("spec") or {}
    name = form.get(NAME, "").strip()
    namespace = form.get(ENVIRONMENT, "").strip()
    if not name:
        result.missing.append("a name for the request")
    elif len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN, name):
        result.add(NAME, f'metadata.name: Invalid value: "{name}": {NAME_RULE}')
    if not namespace:
        result.missing.append("an environment")
    elif namespace not in environments or namespace not in snapshot.environments:
        result.add(ENVIRONMENT, f"environment {namespace!r} is not one you may create ServiceRequests in")
    elif problem := _tier_problem(golden, snapshot.environments[namespace]):
        result.add(ENVIRONMENT, problem)
    schema = spec.get("parameters") or {"type": "object"}
    params = form_parameters(schema, form)
    if result.missing or result.errors:
        # No manifest yet, but each parameter can already be checked, with admission's words.
        _check_parameters(result, schema, params)
        return result

    body = manifest(name, namespace, golden_path, params)
    env = snapshot.environments[namespace]
    old = snapshot.requests.get(f"{namespace}/{name}")
    result.exists = old is not None
    result.yaml = manifest_yaml(body)
    result.file_name = f"{name}.yaml"
    result.apply_line = f"kubectl apply -f {name}.yaml"
    result.dry_run_line = f"kubectl apply --dry-run=server -f {name}.yaml"
    siblings = snapshot.requests_in(namespace)
    cost = request_variables(
        body,
        old,
        env,
        golden,
        userinfo,
        siblings=[(s, snapshot.golden_paths.get(str((s.get("spec") or {}).get("goldenPath")))) for s in siblings],
    )["cost"]
    result.cost = Cost(
        monthly=cost["monthly"],
        currency=cost["currency"],
        environment_before=cost["environmentMonthly"] - cost["monthly"] + _old_cost(old, golden),
        environment_after=cost["environmentMonthly"],
        budget=cost["budget"],
    )
    if old is not None and spec_unchanged(body, old):
        result.unchanged = True  # kubectl would say "unchanged": nothing to admit
        return result
    verdict = decide_service_request(
        settings,
        body,
        old,
        userinfo,
        env=env,
        golden_paths=snapshot.golden_paths.values(),
        siblings=siblings,
        policies=compile_active(snapshot.policies.values()),
        check_team_boundary=userinfo is not None,
    ).review
    result.denial = verdict.denial
    result.warnings = verdict.warnings
    if verdict.denial and verdict.denial.startswith(parameters.REFUSAL):
        _check_parameters(result, schema, params)
    return result


def _check_parameters(result: Preview, schema: JSON, params: JSON) -> None:
    """Each schema error next to its field: the same errors, in the same words, as the denial."""
    if schema_problem(schema) is None:
        _assign(result, parameters.validate(schema, params)[1])


def _old_cost(old: JSON | None, golden: JSON) -> float:
    """What the request being replaced costs now (0 for a new one), so "before" is the environment today."""
    return 0.0 if old is None else request_cost_cents(old, golden)[0] / 100
