"""The one shape of "not done, try again later": a Failure with a reason, a message and a delay.

A controller raises it after it has said in status what happened; the handlers translate it to
Kopf in one place (:mod:`blacktop.handlers.wiring`), so no controller knows Kopf and every retry
says why and when.

Errors that do not come from the request itself (the API server timing out during an outage, a
full disk under the workspace, a module that cannot be read, a bug) must not escape as anything
else: :func:`classify` names each of them with a Reason and words, so a reconcile records them like
any failed run (status, Event, backoff, ``failures``) instead of leaving status at "planning ...".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from blacktop.api.conditions import Reason
from blacktop.kube.errors import KubeApiError, UnavailableError
from blacktop.terraform.module import ModuleError
from blacktop.terraform.workspace import WorkspaceError

logger = logging.getLogger(__name__)


class Failure(Exception):  # noqa: N818 (a signal to the caller, not an error)
    """The object is not converged yet: ``reason`` (a CamelCase Reason), ``message`` (what happened
    and what to do), and ``delay``: seconds until the next attempt."""

    def __init__(self, reason: str, message: str, *, delay: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay

    def __repr__(self) -> str:
        return f"Failure({self.reason!r}, {self.message!r}, delay={self.delay})"


@dataclass(frozen=True)
class Classified:
    """An error in the words of status: the step it broke, its Reason and what happened."""

    step: str
    reason: str
    detail: str


def classify(exc: BaseException) -> Classified:
    """What ``exc`` (anything but a Failure) means for the request it stopped."""
    if isinstance(exc, UnavailableError):
        return Classified(
            "talking to the API server",
            Reason.API_UNAVAILABLE,
            f"the Kubernetes API server did not answer ({exc.message}); retrying as soon as it is back",
        )
    if isinstance(exc, KubeApiError):
        return Classified(
            "talking to the API server",
            Reason.API_REJECTED,
            f"the API server refused {exc}; the operator's permissions or the objects it writes need a look",
        )
    if isinstance(exc, WorkspaceError):
        return Classified("preparing the workspace", Reason.WORKSPACE_ERROR, f"{exc}; free space or fix the disk")
    if isinstance(exc, ModuleError):
        return Classified(
            "reading the module",
            Reason.MODULE_UNAVAILABLE,
            f"{exc}; the golden path's module must be on every operator replica",
        )
    if isinstance(exc, OSError):
        return Classified(
            "preparing the workspace",
            Reason.WORKSPACE_ERROR,
            f"the operator's file system failed: {exc.strerror or exc}; free space or fix the disk",
        )
    logger.error("unexpected error, reported as InternalError", exc_info=exc)
    return Classified(
        "reconciling", Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc} (a bug: see the operator's log)"
    )
