"""Pure analysis of a parsed module: providers it needs and constructs the platform forbids.

Golden-path modules run with the operator's credentials, so anything that executes arbitrary
programs on the operator (``local-exec``/``remote-exec`` provisioners, the ``external`` data source)
is refused, and providers must come from the operator's allow-list. This module only looks at
already-parsed HCL (the shape python-hcl2 produces), so every rule is unit-tested without files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FORBIDDEN_PROVISIONERS = frozenset({"local-exec", "remote-exec"})
FORBIDDEN_DATA_SOURCES = frozenset({"external"})


def unquote(value: object) -> str:
    """python-hcl2 keeps string literals and block labels quoted (``'"local-exec"'``)."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


@dataclass
class Findings:
    """What a module needs and what it does that it must not."""

    providers: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    variables: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)
    # Names of the module calls: their code is only known once `init` fetched it, so only the plan
    # of such a module can tell what it runs.
    module_calls: set[str] = field(default_factory=set)


def _blocks(doc: Mapping[str, Any], kind: str) -> Iterable[Mapping[str, Any]]:
    for block in doc.get(kind, []) or []:
        if isinstance(block, Mapping):
            yield block


def normalize_source(name: str, source: str | None) -> str:
    """``random`` or ``hashicorp/random`` or ``registry.opentofu.org/hashicorp/random`` → ``hashicorp/random``."""
    if not source:
        return f"hashicorp/{name}"
    parts = source.lower().split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"hashicorp/{parts[0]}"


def _named(block: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """The labelled entries of a block (python-hcl2 adds ``__is_block__`` markers)."""
    return ((unquote(k), v) for k, v in block.items() if not str(k).startswith("__"))


def _local_provider(resource_type: str) -> str | None:
    """The provider a resource or data type implies: ``random_password`` → ``random``."""
    if resource_type == "terraform_data":  # built into the binary
        return None
    return resource_type.split("_", 1)[0]


def _scan_providers(doc: Mapping[str, Any], required: dict[str, str | None], used: set[str]) -> None:
    for terraform in _blocks(doc, "terraform"):
        for entry in terraform.get("required_providers", []) or []:
            for name, spec in _named(entry):
                source = spec.get("source") if isinstance(spec, Mapping) else None
                required[name] = unquote(source) if source else None
    for block in _blocks(doc, "provider"):
        used.update(name for name, _ in _named(block))
    for kind in ("resource", "data"):
        for block in _blocks(doc, kind):
            for rtype, _ in _named(block):
                local = _local_provider(rtype)
                if local is not None and not (kind == "data" and rtype in FORBIDDEN_DATA_SOURCES):
                    used.add(local)


def _scan_violations(filename: str, doc: Mapping[str, Any]) -> list[str]:
    violations = []
    for block in _blocks(doc, "resource"):
        for rtype, instances in _named(block):
            for rname, body in _named(instances) if isinstance(instances, Mapping) else ():
                provisioners = body.get("provisioner", []) if isinstance(body, Mapping) else []
                for provisioner in provisioners or []:
                    violations += [
                        f'resource "{rtype}" "{rname}" in {filename} uses the {kind} provisioner, '
                        "which would run programs on the operator"
                        for kind, _ in _named(provisioner)
                        if kind in FORBIDDEN_PROVISIONERS
                    ]
    for block in _blocks(doc, "data"):
        for dtype, instances in _named(block):
            if dtype in FORBIDDEN_DATA_SOURCES and isinstance(instances, Mapping):
                violations += [
                    f'data "{dtype}" "{dname}" in {filename} runs an external program, which golden paths may not do'
                    for dname, _ in _named(instances)
                ]
    return violations


def analyse(files: Mapping[str, Mapping[str, Any]]) -> Findings:
    """Findings for a module given as file name → parsed HCL."""
    found = Findings()
    required: dict[str, str | None] = {}  # local provider name -> source
    used: set[str] = set()  # local names used by provider blocks, resources and data sources
    for filename, doc in sorted(files.items()):
        _scan_providers(doc, required, used)
        found.violations += _scan_violations(filename, doc)
        for block in _blocks(doc, "variable"):
            found.variables.update(name for name, _ in _named(block))
        for block in _blocks(doc, "output"):
            found.outputs.update(name for name, _ in _named(block))
        for block in _blocks(doc, "module"):
            found.module_calls.update(name for name, _ in _named(block))
    # A resource whose prefix matches no required provider still needs one: hashicorp/<prefix>.
    found.providers = {normalize_source(local, required.get(local)) for local in set(required) | used}
    return found


def disallowed_providers(providers: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Providers not on the allow-list (sorted)."""
    allow = {a.lower() for a in allowed}
    return sorted(p for p in providers if p.lower() not in allow)
