"""The one shape of "not done, try again later": a Failure with a reason, a message and a delay.

A controller raises it after it has said in status what happened; the handlers translate it to
Kopf in one place (:mod:`blacktop.handlers.wiring`), so no controller knows Kopf and every retry
says why and when. Anything else a reconcile raises is a bug or an API outage, and Kopf retries
it with its own backoff.
"""

from __future__ import annotations


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
