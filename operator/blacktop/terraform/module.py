"""Reading a golden path's module from disk: where it is, what it needs, what it must not do.

The module path comes from a GoldenPath; it is resolved inside the operator's modules root and may
never escape it (``..``, absolute paths, symlinks out of the root).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import hcl2

from blacktop.terraform.findings import Findings, analyse


class ModuleError(Exception):
    """The module cannot be used; the message says why in words a platform engineer acts on."""


@dataclass(frozen=True)
class ModuleInfo:
    """A module as found on disk."""

    path: Path
    digest: str
    findings: Findings


def resolve(root: Path, module: str) -> Path:
    """The module's folder under ``root``; ModuleError if it is missing or outside the root."""
    base = root.resolve()
    target = (base / module).resolve()
    if not target.is_relative_to(base):
        raise ModuleError(f"module {module!r} points outside the modules root {base}")
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


def inspect(root: Path, module: str) -> ModuleInfo:
    """Resolve, parse and analyse a module (blocking file I/O: call it in a thread)."""
    path = resolve(root, module)
    parsed = {}
    for file in sorted(path.iterdir()):
        if file.suffix not in (".tf", ".tofu"):
            continue
        try:
            with file.open(encoding="utf-8") as fh:
                parsed[file.name] = hcl2.load(fh)
        except Exception as exc:  # the parser raises several lark error types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModuleError(f"module {module!r}: cannot parse {file.name}: {first_line}") from exc
    if not parsed:
        raise ModuleError(f"module {module!r} has no .tf files")
    return ModuleInfo(path=path, digest=digest(path), findings=analyse(parsed))
