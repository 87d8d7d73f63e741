"""A request's working directory: a copy of the module, the state backend, the variables.

The shipped module folder is never run in place. Each request gets its own directory (kept between
runs so installed providers are reused), refreshed from the module before every run. State lives in
the cluster through the built-in ``kubernetes`` backend (:mod:`blacktop.terraform.state`). Variables
go into a JSON var file: nothing is ever interpolated into a shell. The tool's output goes to files
in ``.blacktop/`` (read after it exits, so the tool never writes into a pipe whose reader may be
gone), next to the pid of the tool running now. Only the subprocess runner knows this layout;
everything else talks to a :class:`blacktop.terraform.runner.Runner`. A workspace holds the
variables, saved plans (with every value the plan knows, generated passwords included) and provider
caches, so it is readable by the operator's user only: folders 0700, files 0600 (0700 when
executable), and the tool runs with umask 077 (terraform/subprocess_runner.py) so what it writes is
too. Any failure of the file system (a full disk, a read-only mount) is a :class:`WorkspaceError`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blacktop.terraform.state import StateRef

RUN_DIR = ".blacktop"  # the tool's output files and the pid of the tool running now
KEEP = {".terraform", ".terraform.lock.hcl", RUN_DIR}
# What a run inherits from the operator's environment: the basics, and in a cluster where the
# apiserver is (the kubernetes backend's in_cluster_config reads these two, as client-go does).
_PASSED_THROUGH = frozenset(
    {"PATH", "HOME", "TMPDIR", "LANG", "SSL_CERT_FILE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
)
VAR_FILE = "terraform.tfvars.json"
PLAN_FILE = "tfplan"
STATE_FILE = "terraform.tfstate"
PID_FILE = "tool.pid"


class WorkspaceError(Exception):
    """The workspace could not be prepared or read (the operator's disk, not the request)."""


@dataclass(frozen=True)
class Backend:
    """How the tool reaches a request's state: the kubernetes backend, with a kubeconfig or in-cluster."""

    state: StateRef
    kubeconfig: str | None  # one file, or several joined by os.pathsep (as $KUBECONFIG); None: in-cluster

    def config(self) -> dict[str, Any]:
        backend: dict[str, Any] = {"secret_suffix": self.state.suffix, "namespace": self.state.namespace}
        paths = [p for p in (self.kubeconfig or "").split(os.pathsep) if p]
        if len(paths) == 1:
            backend["config_path"] = paths[0]
        elif paths:
            backend["config_paths"] = paths
        else:
            backend["in_cluster_config"] = True
        return {"terraform": {"backend": {"kubernetes": backend}}}


def _private(path: Path) -> None:
    """Make ``path`` and everything under it the owner's only (symlinks, e.g. into a plugin cache, left alone)."""
    for folder, dirs, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in (*dirs, *files):
            entry = Path(folder) / name
            if entry.is_symlink():
                continue
            executable = entry.is_dir() or os.access(entry, os.X_OK)
            entry.chmod(0o700 if executable else 0o600)


@dataclass(frozen=True)
class LocalBackend:
    """State in a file of the workspace: a runner pod keeps it in step with the state Secret itself
    (its ServiceAccount may touch that one Secret, not list Secrets as the kubernetes backend's init does)."""

    def config(self) -> dict[str, Any]:
        return {"terraform": {"backend": {"local": {"path": STATE_FILE}}}}


def prepare(root: Path, key: str, module: Path, variables: dict[str, Any], backend: Backend | LocalBackend) -> Path:
    """(Re)create the workspace ``root/key`` from ``module``; returns its path (blocking I/O).
    Raises WorkspaceError when the file system refuses (no space left, read-only, ...)."""
    try:
        return _prepare(root, key, module, variables, backend)
    except OSError as exc:
        raise WorkspaceError(f"cannot prepare the workspace {root / key}: {exc.strerror or exc}") from exc


def _prepare(root: Path, key: str, module: Path, variables: dict[str, Any], backend: Backend | LocalBackend) -> Path:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_uid == os.getuid():
        root.chmod(0o700)  # it may predate this rule
    # else a mount someone else owns (a runner pod's emptyDir): the workspace below is ours, 0700.
    workdir = root / key
    workdir.mkdir(mode=0o700, exist_ok=True)
    for entry in workdir.iterdir():
        if entry.name in KEEP:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in module.iterdir():
        if entry.name in KEEP:
            continue
        target = workdir / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copy2(entry, target)
    (workdir / "blacktop_backend_override.tf.json").write_text(json.dumps(backend.config(), indent=2))
    var_file = workdir / VAR_FILE
    var_file.write_text(json.dumps(variables, indent=2, sort_keys=True))
    (workdir / RUN_DIR).mkdir(exist_ok=True)
    _private(workdir)  # copies keep the module's 0644; providers and plans of earlier runs too
    return workdir


def output_files(workdir: Path, operation: str) -> tuple[Path, Path]:
    """Where one operation's stdout and stderr go."""
    return workdir / RUN_DIR / f"{operation}.stdout", workdir / RUN_DIR / f"{operation}.stderr"


def read_output(path: Path, limit: int) -> str:
    """The text the tool wrote to ``path``: its first ``limit`` bytes (blocking I/O)."""
    try:
        with path.open("rb") as fh:
            return fh.read(limit).decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise WorkspaceError(f"cannot read the tool's output {path}: {exc.strerror or exc}") from exc


def pid_file(workdir: Path) -> Path:
    """The file naming the tool process running in ``workdir`` now (absent when none runs)."""
    return workdir / RUN_DIR / PID_FILE


def recorded_pid(workdir: Path) -> int | None:
    """The pid a tool recorded in ``workdir`` and did not clear (its run did not end cleanly)."""
    try:
        return int(pid_file(workdir).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def remove(root: Path, key: str) -> None:
    """Delete a workspace (after a successful destroy)."""
    shutil.rmtree(root / key, ignore_errors=True)


def environment(cli_config: Path | None, credentials: dict[str, str]) -> dict[str, str]:
    """The process environment of a run: minimal, non-interactive, offline provider installation."""
    env = {k: v for k, v in os.environ.items() if k in _PASSED_THROUGH}
    env.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
    if cli_config is not None and cli_config.exists():
        env["TF_CLI_CONFIG_FILE"] = str(cli_config)
    env.update(credentials)
    return env
