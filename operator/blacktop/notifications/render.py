"""The bodies Blacktop posts, and how a generic webhook's body is signed. Pure.

Slack-compatible incoming webhooks (Slack, Mattermost, Rocket.Chat, Discord's /slack endpoint)
all read ``text``; Slack also renders ``blocks``. The generic webhook gets one JSON document per
notice (``apiVersion: notifications.blacktop.dev/v1``) whose raw bytes are signed with
HMAC-SHA256 under the channel's key: header ``X-Blacktop-Signature-256: sha256=<hex>``, the same
scheme as GitHub's ``X-Hub-Signature-256``. ``id`` is stable across retries (drop duplicates by
it) and ``time`` says when the transition was seen (refuse stale replays by it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from blacktop.api.notifications import NotificationEvent
from blacktop.notifications.notices import Notice

API_VERSION = "notifications.blacktop.dev/v1"
SIGNATURE_HEADER = "X-Blacktop-Signature-256"
DELIVERY_HEADER = "X-Blacktop-Delivery"
EVENT_HEADER = "X-Blacktop-Event"

SEVERITY = {
    NotificationEvent.READY: "info",
    NotificationEvent.FAILED: "error",
    NotificationEvent.AWAITING_APPROVAL: "info",
    NotificationEvent.DRIFTED: "warning",
    NotificationEvent.EXPIRING: "warning",
    NotificationEvent.BUDGET_NEARLY_SPENT: "warning",
}
_EMOJI = {
    NotificationEvent.READY: ":white_check_mark:",
    NotificationEvent.FAILED: ":x:",
    NotificationEvent.AWAITING_APPROVAL: ":raised_hand:",
    NotificationEvent.DRIFTED: ":warning:",
    NotificationEvent.EXPIRING: ":hourglass_flowing_sand:",
    NotificationEvent.BUDGET_NEARLY_SPENT: ":moneybag:",
}


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters (a message is data, never markup or a mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(notice: Notice) -> dict[str, Any]:
    """An incoming-webhook payload: ``text`` for every Slack-compatible receiver, ``blocks`` for Slack."""
    headline = f"{_EMOJI[notice.event]} *{_escape(notice.summary)}*"
    context = [f"team {notice.team}" if notice.team else "", f"environment {notice.environment}", notice.reason]
    fields = "\n".join(f"• {key}: `{_escape(value)}`" for key, value in notice.details if key != "command")
    command = dict(notice.details).get("command")
    lines = [headline, _escape(notice.message)] + ([fields] if fields else [])
    if command and command not in notice.message:
        lines.append(f"Approve with: `{_escape(command)}`")
    text = "\n".join(line for line in lines if line)
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _escape(" · ".join(c for c in context if c))}],
            },
        ],
    }


def json_body(notice: Notice) -> dict[str, Any]:
    """The generic webhook document."""
    return {
        "apiVersion": API_VERSION,
        "id": notice.id,
        "time": notice.time,
        "event": notice.event.value,
        "severity": SEVERITY[notice.event],
        "object": {"kind": notice.kind, "namespace": notice.namespace, "name": notice.name},
        "environment": notice.environment,
        "team": notice.team,
        "goldenPath": notice.golden_path,
        "reason": notice.reason,
        "summary": notice.summary,
        "message": notice.message,
        "details": dict(notice.details),
    }


def encode(body: dict[str, Any]) -> bytes:
    """The exact bytes that are sent (and signed)."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def signature(key: str, payload: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body under ``key``."""
    return "sha256=" + hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


def verify(key: str, payload: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(signature(key, payload), header)
