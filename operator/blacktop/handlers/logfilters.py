"""Kopf's log lines, tuned for the people who read them.

Kopf logs every handler's success at INFO, including the routine ones that run on every watch
event, timer tick or admission review (metrics, the portal's cache, child watches, cost, resyncs, drift and TTL
checks, webhooks): in a real cluster that is thousands of lines an hour that say nothing. Those
successes drop to DEBUG (`blacktop run --verbose` still shows them); failures are untouched. And a
guardrail denial is the webhook doing its job, yet Kopf logs a handler raising AdmissionError as
"failed permanently" at ERROR: it stays in the log (who was denied and why) at INFO, so ERROR is
kept for failures an SRE must act on.
"""

from __future__ import annotations

import logging

# Ids of handlers that run on every event or tick (see the handlers modules).
ROUTINE_IDS = (
    "metrics-",
    "portal-",
    "notifications-",
    "scorecard-",
    "environment-child-",
    "environment-cost",
    "leftovers-watch",
    "environment_resync",
    "environment_ttl",
    "golden_path_resync",
    "service_request_inputs",
    "drift-schedule",
    "validate-",
    "mutate-",
)
# How Kopf names a handler in its lines, by kind of handler.
_KINDS = ("Handler", "Timer", "Webhook")
_SUCCEEDED = " succeeded."
_DENIED = " failed permanently: "
# Retries that are waits, not failures: a consumer waiting for its sources, a source for its consumers.
_WAITS = (" failed temporarily: WaitingForInputs: ", " failed temporarily: WaitingForDependents: ")


def _handler_id(message: str) -> str | None:
    """``"Timer 'environment_resync' succeeded."`` → ``environment_resync``."""
    kind, _, rest = message.partition(" '")
    if kind not in _KINDS or "'" not in rest:
        return None
    return rest.split("'", 1)[0]


def _expected(handler: str, message: str) -> bool:
    """A denial by the webhook, or a retry that waits for other requests: the system working."""
    denied = handler.startswith("validate-") and _DENIED in message
    return denied or any(wait in message for wait in _WAITS)


def _relevel(record: logging.LogRecord, level: int) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)


class KopfLines(logging.Filter):
    """Re-levels Kopf's routine successes (to DEBUG) and guardrail denials (to INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        handler = _handler_id(message)
        if handler is None:
            return True
        if record.levelno == logging.INFO and message.endswith(_SUCCEEDED) and handler.startswith(ROUTINE_IDS):
            _relevel(record, logging.DEBUG)
        elif record.levelno == logging.ERROR and _expected(handler, message):
            _relevel(record, logging.INFO)
        # A record re-levelled below the logger's level must not reach the handlers either.
        return record.levelno >= logging.getLogger(record.name).getEffectiveLevel()


def install() -> None:
    """Attach the filter to Kopf's per-object logger (idempotent); the webhook server's access log
    (a line per admission review) says nothing the review metrics do not."""
    logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, KopfLines) for f in logger.filters):
        logger.addFilter(KopfLines())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
