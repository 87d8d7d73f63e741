"""The built-in protections, checked before every OpenTofu run: provisioning, drift and destroy alike.

A golden path's module is checked when the GoldenPath is applied and whenever it is reconciled, but
the files on disk can change afterwards (a new image, a ConfigMap edited), and a destroy never
makes a plan the Plan-stage checks could look at: a destroy-time ``local-exec`` once ran on the
operator when a request was deleted. So every run checks the module it is about to run, twice: the
shipped folder (it must resolve inside the modules root, with no symlink out of it) right before it
is copied, and the request's workspace copy, which is exactly what ``tofu`` reads, right after. A
module that fails either check never reaches ``tofu init`` (which would download remote modules),
and the run fails like a run: reported with its reason (ForbiddenProvisioner, ProviderNotAllowed,
ModuleOutsideRoot, ModuleNotFound) and retried with backoff, so a fixed module lets it through.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from blacktop.api.conditions import Reason
from blacktop.terraform import module as modules
from blacktop.terraform.errors import Classification
from blacktop.terraform.findings import refusal
from blacktop.terraform.runner import RunResult


class ModuleRefused(Exception):  # noqa: N818 (a refusal, reported like a failed run)
    """The module must not run; ``reason`` is the condition reason, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def result(self) -> RunResult:
        """The refusal as a failed run, so it is reported and retried like any other failure."""
        return RunResult(
            operation="init",
            exit_code=1,
            stdout="",
            stderr=f"refused before any tofu command ran: {self.message}",
            seconds=0.0,
            classification=Classification(self.reason),
        )


def refused(exc: modules.ModuleError) -> ModuleRefused:
    """The refusal of a module that cannot be read or reaches outside the modules root."""
    reason = Reason.MODULE_OUTSIDE_ROOT if isinstance(exc, modules.ModuleEscapeError) else Reason.MODULE_NOT_FOUND
    return ModuleRefused(reason, str(exc))


def source(root: Path, module: str) -> Path:
    """The shipped module folder, resolved and free of symlinks out of the root (blocking I/O)."""
    try:
        path = modules.resolve(root, module)
        modules.check_links(path, root)
    except modules.ModuleError as exc:
        raise refused(exc) from None
    return path


def check_workspace(workdir: Path, module: str, allowed_providers: Iterable[str]) -> None:
    """Raise ModuleRefused unless the workspace copy passes the built-in protections (blocking I/O)."""
    try:
        findings = modules.inspect_folder(workdir, workdir, module)
    except modules.ModuleError as exc:
        raise refused(exc) from None
    if problem := refusal(findings, allowed_providers):
        raise ModuleRefused(*problem)
