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
from collections.abc import Callable
from dataclasses import dataclass

from blacktop.api.conditions import Reason
from blacktop.kube.errors import KubeApiError, UnavailableError
from blacktop.terraform.module import ModuleError, ModuleEscapeError
from blacktop.terraform.sources import SourceError
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


def _api_down(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, KubeApiError) else str(exc)
    return f"the Kubernetes API server did not answer ({message}); retrying as soon as it is back"


def _disk(exc: BaseException) -> str:
    if isinstance(exc, WorkspaceError):
        return f"{exc}; free space or fix the disk"
    words = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return f"the operator's file system failed: {words}; free space or fix the disk"


# The known errors that are not a tool's, in the order they are checked (subclasses before their
# bases): the step they broke, their Reason, and their words.
_KNOWN: tuple[tuple[type[BaseException], str, str, Callable[[BaseException], str]], ...] = (
    (UnavailableError, "talking to the API server", Reason.API_UNAVAILABLE, _api_down),
    (
        KubeApiError,
        "talking to the API server",
        Reason.API_REJECTED,
        lambda e: f"the API server refused {e}; the operator's permissions or the objects it writes need a look",
    ),
    (WorkspaceError, "preparing the workspace", Reason.WORKSPACE_ERROR, _disk),
    (
        SourceError,
        "fetching the module",
        Reason.SOURCE_UNAVAILABLE,
        lambda e: f"{e}; retrying (check the golden path's git URL, ref and credentials)",
    ),
    (
        ModuleEscapeError,
        "reading the module",
        Reason.MODULE_OUTSIDE_ROOT,
        lambda e: f"{e}; the golden path's module must stay inside its folder (no symlink or path out of it)",
    ),
    (
        ModuleError,
        "reading the module",
        Reason.MODULE_UNAVAILABLE,
        lambda e: f"{e}; the golden path's module must be on every operator replica",
    ),
    (OSError, "preparing the workspace", Reason.WORKSPACE_ERROR, _disk),
)


def classify(exc: BaseException) -> Classified:
    """What ``exc`` (anything but a Failure) means for the request it stopped."""
    for kind, step, reason, words in _KNOWN:
        if isinstance(exc, kind):
            return Classified(step, reason, words(exc))
    logger.error("unexpected error, reported as InternalError", exc_info=exc)
    return Classified(
        "reconciling", Reason.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc} (a bug: see the operator's log)"
    )
