"""Built-in protections, checked again on every plan (``show -json``): providers and forbidden constructs. Pure.

The GoldenPath admission and controller check a module's source; the plan is what will actually
run, so it is checked too: every provider it uses must be on the operator's allow-list (the
``builtin`` provider of ``terraform_data`` always is), and no resource may carry a ``local-exec``/
``remote-exec`` provisioner nor a data source run an ``external`` program.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

FORBIDDEN_PROVISIONERS = frozenset({"local-exec", "remote-exec"})
FORBIDDEN_DATA_SOURCES = frozenset({"external"})
BUILTIN = "builtin/terraform"


def normalize_provider(full_name: str) -> str:
    """``registry.opentofu.org/hashicorp/random`` → ``hashicorp/random``; a bare name gets ``hashicorp/``."""
    parts = [p for p in str(full_name).lower().split("/") if p]
    if not parts:
        return ""
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"hashicorp/{parts[0]}"


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _modules(module: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """A configuration module and all its nested module calls."""
    if not isinstance(module, Mapping):
        return
    yield module
    for call in _dict(module.get("module_calls")).values():
        if isinstance(call, Mapping):
            yield from _modules(call.get("module"))


def _config_resources(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for module in _modules(_dict(plan.get("configuration")).get("root_module")):
        for resource in _list(module.get("resources")):
            if isinstance(resource, Mapping):
                yield resource


def plan_providers(plan: Mapping[str, Any]) -> set[str]:
    """Every provider (namespace/type) the plan's changes and configuration name."""
    found: set[str] = set()
    for change in _list(plan.get("resource_changes")):
        if isinstance(change, Mapping) and change.get("provider_name"):
            found.add(normalize_provider(str(change["provider_name"])))
    for provider in _dict(_dict(plan.get("configuration")).get("provider_config")).values():
        if isinstance(provider, Mapping) and (provider.get("full_name") or provider.get("name")):
            found.add(normalize_provider(str(provider.get("full_name") or provider.get("name"))))
    found.discard("")
    return found


def plan_problems(plan: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """Why the plan must not be applied (empty: it may)."""
    allow = {a.lower() for a in allowed} | {BUILTIN}
    problems = []
    bad = sorted(p for p in plan_providers(plan) if p not in allow)
    if bad:
        problems.append(f"the plan uses provider(s) {', '.join(bad)}, which are not on the allow-list")
    for resource in _config_resources(plan):
        address = str(resource.get("address") or resource.get("name") or "?")
        for provisioner in _list(resource.get("provisioners")):
            kind = provisioner.get("type") if isinstance(provisioner, Mapping) else None
            if kind in FORBIDDEN_PROVISIONERS:
                problems.append(f"{address} uses the {kind} provisioner, which would run programs on the operator")
        if resource.get("mode") == "data" and resource.get("type") in FORBIDDEN_DATA_SOURCES:
            problems.append(f"{address} runs an external program, which golden paths may not do")
    return problems
