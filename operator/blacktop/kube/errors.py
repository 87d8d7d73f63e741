"""Errors from the Kubernetes API, classified so callers can branch on what happened, not on numbers."""

from __future__ import annotations


class KubeApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class UnavailableError(KubeApiError):
    """The API server could not be reached or did not answer in time (status 0), or answered that it
    cannot serve now (429, 5xx): an outage of the cluster's control plane, retried soon."""


class NotFoundError(KubeApiError):
    """404: the object (or its kind) does not exist."""


class ConflictError(KubeApiError):
    """409: a field-manager conflict, a resourceVersion conflict, or an object that already exists."""


class ForbiddenError(KubeApiError):
    """403: RBAC said no (or an admission plugin such as namespace lifecycle did)."""


class InvalidError(KubeApiError):
    """422: the object failed validation (OpenAPI schema or a CEL rule)."""


_BY_STATUS: dict[int, type[KubeApiError]] = {
    404: NotFoundError,
    409: ConflictError,
    403: ForbiddenError,
    422: InvalidError,
}


def error_for(status: int, reason: str, message: str, method: str = "", path: str = "") -> KubeApiError:
    """Build the most specific error class for an HTTP status."""
    cls = _BY_STATUS.get(status, UnavailableError if status == 429 or status >= 500 else KubeApiError)
    return cls(status, reason, message, method, path)
