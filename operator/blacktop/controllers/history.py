"""The history recorder: keeps each ServiceRequest's ``status.history`` in step with its status.

Runs on every watch event of a request (beside the metrics watch, no API calls of its own but the
write): :func:`blacktop.builders.history.next_history` decides, and only a history that changed is
written, as a merge patch of ``status.history`` alone (through :func:`blacktop.kube.status.write_status`,
with a model holding nothing else: the StatusTracker writes a whole status, conditions included,
which is the reconciler's). The reconciler never writes that field, and this recorder never writes
another, so neither can overwrite the other. A request being deleted,
or gone, hands its facts to the scorecard's ledger (through the book) before they disappear.
"""

from __future__ import annotations

import logging
from typing import Any

from blacktop.api.history import HistoryStatus, RequestHistory
from blacktop.builders.history import next_history
from blacktop.controllers.context import Context
from blacktop.kube.errors import KubeApiError, NotFoundError
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.kube.status import write_status
from blacktop.metrics.ledger import retired_from_body

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
# managedFields show status.history as this manager's: nobody else writes it.
FIELD_MANAGER = "blacktop-scorecard"


def _current(body: JSON) -> RequestHistory:
    try:
        return RequestHistory.model_validate((body.get("status") or {}).get("history") or {})
    except ValueError:
        return RequestHistory()  # unreadable: recorded afresh


async def record_history(ctx: Context, body: JSON, *, deleted: bool = False) -> RequestHistory | None:
    """Record what ``body`` (one watch event's object) adds to its history; None when nothing was written."""
    meta = body["metadata"]
    book = ctx.metrics.scorecard
    now = ctx.now()
    if deleted:
        record = retired_from_body(body, now)
        if record is not None:
            book.retire(record)
        return None
    if meta.get("deletionTimestamp"):
        book.poke()  # the scorecard retires it while the finalizer still holds the object
    namespace, name = str(meta["namespace"]), str(meta["name"])
    edits = book.platform_edits.pending(namespace, name, up_to=int(meta.get("generation") or 1))
    history = next_history(body, now=now, platform_edits=edits)
    if history == _current(body):
        book.platform_edits.forget(namespace, name, list(edits))
        return None
    try:
        await write_status(
            ctx.client, SERVICEREQUESTS, name, HistoryStatus(history=history), namespace, field_manager=FIELD_MANAGER
        )
    except NotFoundError:
        return None  # gone meanwhile: its DELETED event retires it
    except KubeApiError as exc:
        # The next event of the request records it (the derivation is level-based: nothing is lost).
        logger.warning("could not record the history of ServiceRequest %s/%s: %s", namespace, name, exc)
        return None
    book.platform_edits.forget(namespace, name, list(edits))
    return history
