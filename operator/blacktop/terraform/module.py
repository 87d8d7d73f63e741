"""Reading a golden path's module from disk: where it is, what it needs, what it must not do.

The module path comes from a GoldenPath; it is resolved inside the operator's modules root and may
never escape it (``..``, absolute paths, symlinks out of the root). A :class:`ModuleCache` parses a
module once per digest: the GoldenPath reconciler hashes the files to notice changes, provisioning
and drift checks reuse what the digest on the golden path's status says was parsed.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import hcl2
from hcl2 import parser as hcl2_parser

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
    return _parse(module, path, digest(path))


def _parse(module: str, path: Path, sha: str) -> ModuleInfo:
    parsed = {}
    try:
        for file in sorted(path.iterdir()):
            if file.suffix not in (".tf", ".tofu"):
                continue
            try:
                with file.open(encoding="utf-8") as fh:
                    parsed[file.name] = hcl2.load(fh)
            except Exception as exc:  # the parser raises several lark error types
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModuleError(f"module {module!r}: cannot parse {file.name}: {first_line}") from exc
    finally:
        # The HCL parser (lark's tables, ~12 MiB) is needed once per module digest: let it go, it
        # is rebuilt from its on-disk cache when a module changes.
        hcl2_parser.parser.cache_clear()
    if not parsed:
        raise ModuleError(f"module {module!r} has no .tf files")
    return ModuleInfo(path=path, digest=sha, findings=analyse(parsed))


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
        info = _parse(module, path, sha)
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
