"""Pure analysis of a parsed module: providers it needs, modules it calls, constructs the platform forbids.

Golden-path modules run with the operator's credentials, so anything that executes arbitrary
programs on the operator (``local-exec``/``remote-exec`` provisioners, the ``external`` data source)
is refused, providers must come from the operator's allow-list, and a module may only call local
modules inside its own folder: a remote source (registry, git, http, ...) would be downloaded by
``tofu init`` and run unread. This module only looks at already-parsed documents: the shape
python-hcl2 produces for ``.tf``/``.tofu`` files, and JSON-syntax files (``.tf.json``,
``.tofu.json``) normalised to that shape by :func:`from_json`, so every rule is unit-tested without
files and one rule set covers both syntaxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from blacktop.api.conditions import Reason

FORBIDDEN_PROVISIONERS = frozenset({"local-exec", "remote-exec"})
FORBIDDEN_DATA_SOURCES = frozenset({"external"})
LOCAL_SOURCE_PREFIXES = ("./", "../")


def unquote(value: object) -> str:
    """python-hcl2 keeps string literals and block labels quoted (``'"local-exec"'``)."""
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


@dataclass(frozen=True)
class ModuleCall:
    """A ``module`` block: its name, its source as written, and the file it is in."""

    name: str
    source: str
    filename: str

    @property
    def local(self) -> bool:
        """Whether the source is a local path (what ``tofu init`` copies, never downloads)."""
        return self.source.startswith(LOCAL_SOURCE_PREFIXES)


@dataclass
class Findings:
    """What a module needs and what it does that it must not."""

    providers: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    variables: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)
    module_calls: list[ModuleCall] = field(default_factory=list)


def _as_list(value: object) -> list[Any]:
    """Blocks come as a list of mappings (HCL) or as one mapping or a list (JSON syntax)."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, Mapping) else []


def _blocks(doc: Mapping[str, Any], kind: str) -> Iterable[Mapping[str, Any]]:
    for block in _as_list(doc.get(kind)):
        if isinstance(block, Mapping):
            yield block


def _named(block: object) -> Iterable[tuple[str, Any]]:
    """The labelled entries of a block (python-hcl2 adds ``__is_block__`` markers)."""
    if not isinstance(block, Mapping):
        return ()
    return ((unquote(k), v) for k, v in block.items() if not str(k).startswith("__"))


def _bodies(value: object) -> Iterable[Mapping[str, Any]]:
    """The bodies under a block's last label (JSON syntax may give several blocks as a list)."""
    return (body for body in _as_list(value) if isinstance(body, Mapping))


def from_json(doc: object) -> dict[str, Any]:
    """A JSON-syntax configuration in the shape python-hcl2 gives HCL (top-level blocks as lists).

    Nested blocks need no rewriting: the analysis accepts one mapping or a list wherever HCL has a list.
    """
    if not isinstance(doc, Mapping):
        return {}
    return {str(kind): _as_list(value) for kind, value in doc.items() if kind != "//"}


def normalize_source(name: str, source: str | None) -> str:
    """``random`` or ``hashicorp/random`` or ``registry.opentofu.org/hashicorp/random`` → ``hashicorp/random``."""
    if not source:
        return f"hashicorp/{name}"
    parts = source.lower().split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"hashicorp/{parts[0]}"


def _local_provider(resource_type: str) -> str | None:
    """The provider a resource or data type implies: ``random_password`` → ``random``."""
    if resource_type == "terraform_data":  # built into the binary
        return None
    return resource_type.split("_", 1)[0]


def _scan_providers(doc: Mapping[str, Any], required: dict[str, str | None], used: set[str]) -> None:
    for terraform in _blocks(doc, "terraform"):
        for entry in _as_list(terraform.get("required_providers")):
            for name, spec in _named(entry):
                source = spec.get("source") if isinstance(spec, Mapping) else None
                required[name] = unquote(source) if source else None
    for block in _blocks(doc, "provider"):
        used.update(name for name, _ in _named(block))
    for kind in ("resource", "data", "ephemeral"):
        for block in _blocks(doc, kind):
            for rtype, _ in _named(block):
                local = _local_provider(rtype)
                if local is not None and not (kind == "data" and rtype in FORBIDDEN_DATA_SOURCES):
                    used.add(local)


def _scan_violations(filename: str, doc: Mapping[str, Any]) -> list[str]:
    violations = []
    for block in _blocks(doc, "resource"):
        for rtype, instances in _named(block):
            for rname, value in _named(instances):
                for body in _bodies(value):
                    for provisioner in _as_list(body.get("provisioner")):
                        violations += [
                            f'resource "{rtype}" "{rname}" in {filename} uses the {kind} provisioner, '
                            "which would run programs on the operator"
                            for kind, _ in _named(provisioner)
                            if kind in FORBIDDEN_PROVISIONERS
                        ]
    for block in _blocks(doc, "data"):
        for dtype, instances in _named(block):
            if dtype in FORBIDDEN_DATA_SOURCES:
                violations += [
                    f'data "{dtype}" "{dname}" in {filename} runs an external program, which golden paths may not do'
                    for dname, _ in _named(instances)
                ]
    return violations


def _scan_modules(filename: str, doc: Mapping[str, Any]) -> list[ModuleCall]:
    calls = []
    for block in _blocks(doc, "module"):
        for name, value in _named(block):
            for body in _bodies(value):
                calls.append(ModuleCall(name, unquote(body.get("source") or ""), filename))
    return calls


def remote_source_violation(call: ModuleCall) -> str:
    """The refusal of a module call that ``tofu init`` would download."""
    return (
        f'module "{call.name}" in {call.filename} has the remote source {call.source!r}; golden-path modules may '
        "only call local modules inside their own folder (./...), which are inspected like the module itself"
    )


def analyse(files: Mapping[str, Mapping[str, Any]]) -> Findings:
    """Findings for a module given as file name → parsed document (HCL shape)."""
    found = Findings()
    required: dict[str, str | None] = {}  # local provider name -> source
    used: set[str] = set()  # local names used by provider blocks, resources and data sources
    for filename, doc in sorted(files.items()):
        _scan_providers(doc, required, used)
        found.violations += _scan_violations(filename, doc)
        found.module_calls += _scan_modules(filename, doc)
        for block in _blocks(doc, "variable"):
            found.variables.update(name for name, _ in _named(block))
        for block in _blocks(doc, "output"):
            found.outputs.update(name for name, _ in _named(block))
    found.violations += [remote_source_violation(c) for c in found.module_calls if not c.local]
    # A resource whose prefix matches no required provider still needs one: hashicorp/<prefix>.
    found.providers = {normalize_source(local, required.get(local)) for local in set(required) | used}
    return found


def disallowed_providers(providers: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Providers not on the allow-list (sorted)."""
    allow = {a.lower() for a in allowed}
    return sorted(p for p in providers if p.lower() not in allow)


def refusal(findings: Findings, allowed: Iterable[str]) -> tuple[str, str] | None:
    """(reason, message) when a module must not run: forbidden constructs first, then providers."""
    if findings.violations:
        return Reason.FORBIDDEN_PROVISIONER, "; ".join(findings.violations)
    allowed = tuple(allowed)
    if bad := disallowed_providers(findings.providers, allowed):
        return Reason.PROVIDER_NOT_ALLOWED, f"provider(s) {', '.join(bad)} not allowed (allowed: {', '.join(allowed)})"
    return None
