"""Reading a golden path's module from disk: where it is, what it needs, what it must not do.

The module path comes from a GoldenPath; it is resolved inside the operator's modules root and may
never escape it (``..``, absolute paths, symlinks out of the root). Inspection reads every file
OpenTofu reads: ``.tf`` and ``.tofu`` files, their JSON forms ``.tf.json`` and ``.tofu.json``,
override files (``override.tf``, ``*_override.tf.json``, ...), and the local modules the module
calls (``source = "./sub"``), recursively; a module call whose source leaves the module's folder
or is remote is a violation, and a symlinked file or folder anywhere in the module that points
outside the modules root is refused like a symlinked module folder. The same inspection runs on a
request's workspace copy before every run (:func:`check_source`, :func:`check_copy`, called by the
runner that copies it), so what is checked is what runs; a module of a revision is checked the same
way inside its git commit's tree or its kept copy. A :class:`ModuleCache` parses a module once per digest: the GoldenPath reconciler
hashes the files to notice changes, provisioning and drift checks reuse what the digest on the
golden path's status says was parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import parser as hcl2_parser

from blacktop.api.conditions import Reason
from blacktop.terraform.findings import Findings, ModuleCall, analyse, from_json, refusal

HCL_SUFFIXES = (".tf", ".tofu")
JSON_SUFFIXES = (".tf.json", ".tofu.json")
# Provider plugins and downloaded modules of a workspace: OpenTofu's own, never configuration.
SKIPPED_FOLDERS = frozenset({".terraform"})
MAX_NESTED_MODULES = 32


class ModuleError(Exception):
    """The module cannot be used; the message says why in words a platform engineer acts on."""


class ModuleEscapeError(ModuleError):
    """The module reaches outside the modules root (a path or a symlink): refused, never run."""


class ModuleRefused(Exception):  # noqa: N818 (a refusal, reported like a failed run)
    """A module that must not run now: ``reason`` is the condition reason, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _refused(exc: ModuleError) -> ModuleRefused:
    reason = Reason.MODULE_OUTSIDE_ROOT if isinstance(exc, ModuleEscapeError) else Reason.MODULE_NOT_FOUND
    return ModuleRefused(reason, str(exc))


@dataclass(frozen=True)
class ModuleInfo:
    """A module as found on disk, and the root it was found in (which it may not reach out of)."""

    path: Path
    digest: str
    findings: Findings
    root: Path


def resolve(root: Path, module: str) -> Path:
    """The module's folder under ``root``; ModuleError if it is missing or outside the root."""
    base = root.resolve()
    target = (base / module).resolve()
    if not target.is_relative_to(base):
        raise ModuleEscapeError(f"module {module!r} points outside the modules root {base}")
    if not target.is_dir():
        raise ModuleError(f"module {module!r} not found: no folder {target} in the modules root")
    return target


def digest(path: Path) -> str:
    """sha256 over the module's files (relative names and contents), stable across machines."""
    sha = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".terraform" not in p.parts):
        sha.update(file.relative_to(path).as_posix().encode() + b"\0")
        sha.update(file.read_bytes() + b"\0")
    return sha.hexdigest()


def is_configuration(name: str) -> bool:
    """Whether OpenTofu reads a file of this name as configuration (it ignores hidden and editor files)."""
    if name.startswith((".", "#")) or name.endswith("~"):
        return False
    return name.endswith(HCL_SUFFIXES + JSON_SUFFIXES)


def check_links(path: Path, root: Path) -> None:
    """Refuse any symlink under ``path`` (files and folders) whose target is outside ``root``."""
    base = root.resolve()
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in SKIPPED_FOLDERS]
        for name in (*dirs, *files):
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(base):
                where = entry.relative_to(path).as_posix()
                raise ModuleEscapeError(
                    f"{where} in module folder {path.name!r} is a symlink to {entry.resolve()}, outside the modules "
                    f"root {base}; ship the file itself"
                )


def _parse(file: Path, label: str) -> dict[str, Any]:
    try:
        with file.open(encoding="utf-8") as fh:
            if file.name.endswith(JSON_SUFFIXES):
                return from_json(json.load(fh))
            parsed: dict[str, Any] = hcl2.load(fh)
            return parsed
    except Exception as exc:  # the parsers raise several error types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModuleError(f"module {label!r}: cannot parse {file.name}: {first_line}") from exc


def _parse_folder(path: Path, label: str) -> dict[str, dict[str, Any]]:
    return {file.name: _parse(file, label) for file in sorted(path.iterdir()) if is_configuration(file.name)}


def _nested(call: ModuleCall, parent: Path, top: Path, label: str) -> Path | str:
    """The folder a local module call reads, or why it may not be used."""
    target = (parent / call.source).resolve()
    if not target.is_relative_to(top):
        return (
            f'module "{call.name}" in {call.filename} has the source {call.source!r}, which leaves the folder of '
            f"module {label!r}; only modules inside it are copied into a request's workspace"
        )
    if not target.is_dir():
        return f'module "{call.name}" in {call.filename}: source {call.source!r} is not a folder of module {label!r}'
    return target


def inspect_folder(path: Path, root: Path, label: str) -> Findings:
    """Findings for the module in ``path`` and every local module it calls (blocking file I/O).

    Variables and outputs are the top module's; providers and violations are everyone's.
    """
    top = path.resolve()
    check_links(path, root)
    parsed = _parse_folder(path, label)
    if not parsed:
        raise ModuleError(f"module {label!r} has no .tf files")
    findings = analyse(parsed)
    queue = [(top, call) for call in findings.module_calls if call.local]
    seen: set[Path] = {top}
    while queue:
        parent, call = queue.pop(0)
        target = _nested(call, parent, top, label)
        if isinstance(target, str):
            findings.violations.append(target)
            continue
        if target in seen:
            continue
        seen.add(target)
        if len(seen) > MAX_NESTED_MODULES:
            raise ModuleError(f"module {label!r} calls more than {MAX_NESTED_MODULES} local modules")
        inner = analyse(_parse_folder(target, label))
        where = target.relative_to(top).as_posix()
        findings.violations += [f"{v} (in local module ./{where})" for v in inner.violations]
        findings.providers |= inner.providers
        queue += [(target, c) for c in inner.module_calls if c.local]
    return findings


def check_source(path: Path, root: Path) -> None:
    """Before a run copies ``path``: it must still be a folder inside ``root`` (the modules root, or the
    git commit's tree or kept copy a revision's module comes from) with no symlink out of it
    (the files may have changed since the golden path was checked). Raises ModuleRefused."""
    try:
        if not path.resolve().is_relative_to(root.resolve()) or not path.is_dir():
            raise ModuleEscapeError(f"module folder {path} is no longer a folder inside the modules root {root}")
        check_links(path, root)
    except ModuleError as exc:
        raise _refused(exc) from None


def check_copy(workdir: Path, module: str, allowed_providers: tuple[str, ...]) -> None:
    """After copying: the workspace copy, exactly what the tool reads, must pass the built-in
    protections (no local-exec/remote-exec/external, local modules only, allowed providers). Raises
    ModuleRefused."""
    try:
        findings = inspect_folder(workdir, workdir, module)
    except ModuleError as exc:
        raise _refused(exc) from None
    if problem := refusal(findings, allowed_providers):
        raise ModuleRefused(*problem)


def inspect(root: Path, module: str) -> ModuleInfo:
    """Resolve, parse and analyse a module (blocking file I/O: call it in a thread)."""
    path = resolve(root, module)
    return _info(module, path, digest(path), root)


def _info(module: str, path: Path, sha: str, root: Path) -> ModuleInfo:
    try:
        return ModuleInfo(path=path, digest=sha, findings=inspect_folder(path, root, module), root=root)
    finally:
        # The HCL parser (lark's tables, ~12 MiB) is needed once per module digest: let it go, it
        # is rebuilt from its on-disk cache when a module changes.
        hcl2_parser.parser.cache_clear()


class ModuleCache:
    """The modules under one root, each parsed once per digest (one entry per module: bounded by the
    catalog). Methods do blocking file I/O: call them in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # called from worker threads
        self._by_module: dict[str, ModuleInfo] = {}

    def inspect(self, module: str) -> ModuleInfo:
        """The module as it is on disk now: hashed every time, parsed only when its digest is new."""
        path = resolve(self.root, module)
        sha = digest(path)
        with self._lock:
            cached = self._by_module.get(module)
        if cached is not None and cached.digest == sha and cached.path == path:
            return cached
        info = _info(module, path, sha, self.root)
        with self._lock:
            self._by_module[module] = info
        return info

    def known(self, module: str, sha: str | None) -> ModuleInfo:
        """The module with digest ``sha`` (what its golden path's status says), without touching the
        files when it was seen; otherwise as on disk now."""
        with self._lock:
            cached = self._by_module.get(module)
        if cached is not None and sha is not None and cached.digest == sha:
            return cached
        return self.inspect(module)
