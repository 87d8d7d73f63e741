"""Keeping secrets out of status, events and logs: redact tool output before anyone sees it."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_PATTERNS = [
    # key = "value" / "key": "value" for names that smell of secrets
    re.compile(r'(?i)((?:password|passwd|secret|token|api[_-]?key|private[_-]?key)"?\s*[:=]\s*")([^"]*)(")'),
    # credentials inside URIs: scheme://user:password@host
    re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)"),
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)(.*?)(-----END [A-Z ]*PRIVATE KEY-----)", re.S),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and every secret-looking pattern masked."""
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    return text


def tail(text: str, lines: int = 12, limit: int = 1500) -> str:
    """The last meaningful lines of tool output (boxes and blank lines dropped), capped in length."""
    kept = [ln.strip(" │╷╵") for ln in text.splitlines()]
    kept = [ln for ln in kept if ln.strip()]
    result = "\n".join(kept[-lines:])
    return result[-limit:]
