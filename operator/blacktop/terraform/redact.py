"""Keeping secrets out of status, events and logs: redact tool output before anyone sees it.

A run knows the values of its credentials (the golden path's Secret: ``PGHOST``, ``PGUSER``,
``PGPASSWORD``, ...). Masking each of them wherever it appears as a substring is wrong both ways:
with ``PGUSER=postgres`` every ``postgresql_role`` becomes ``***ql_role`` and an error such as
"could not connect to PostgreSQL at 127.0.0.1:5432" loses what makes it actionable, while nothing
was secret about a user name or a port. So a :class:`Redactor` masks a known value according to
what it is:

- a value that looks random (long, varied: enough entropy to be a password, a token or a key) is
  masked everywhere, even inside other words: it cannot collide with ordinary text;
- the value of a key whose name says it is secret (``PASSWORD``, ``TOKEN``, ``SECRET``, ``KEY``,
  ...) is masked wherever it stands as a whole token, however short (``hunter22`` inside
  ``postgres://app:hunter22@db`` is masked; inside ``xhunter22y`` it is not the value);
- any other value (``postgres``, ``127.0.0.1``, ``5432``, ``disable``) is masked only where it
  appears as a value: after ``name=``, ``name: `` or ``"name": "`` (``user=postgres``).

On top, patterns that always smell of secrets are masked whatever the known values: ``password =
"..."``-style assignments, the password of a URI's userinfo, PEM private keys.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MASK = "***"
_PATTERNS = [
    # key = "value" / "key": "value" for names that smell of secrets
    re.compile(r'(?i)((?:password|passwd|secret|token|api[_-]?key|private[_-]?key)"?\s*[:=]\s*")([^"]*)(")'),
    # credentials inside URIs: scheme://user:password@host
    re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)"),
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)(.*?)(-----END [A-Z ]*PRIVATE KEY-----)", re.S),
]
# Names of credentials keys whose values are secret however they look.
_SECRET_KEY = re.compile(r"(?i)(pass|pwd|secret|token|key|credential|auth|private|cert|signature|salt|session)")
# Entropy (bits) from which a value is random enough to be masked everywhere: a 12-character
# token of mixed case and digits has ~60, "postgres" ~22, "127.0.0.1" ~20, "hunter22" ~22.
_RANDOM_BITS = 36.0
_RANDOM_MIN_LENGTH = 8
_WORD = r"[A-Za-z0-9_]"


def entropy_bits(value: str) -> float:
    """Shannon entropy of ``value``'s characters times its length: how much it could hide."""
    if not value:
        return 0.0
    counts = Counter(value)
    per_char = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return per_char * len(value)


def looks_random(value: str) -> bool:
    """Whether ``value`` is long and varied enough to be masked wherever it appears."""
    return len(value) >= _RANDOM_MIN_LENGTH and entropy_bits(value) >= _RANDOM_BITS


def _token(value: str) -> str:
    """``value`` as a whole token: not preceded or followed by a letter, digit or underscore."""
    return rf"(?<!{_WORD}){re.escape(value)}(?!{_WORD})"


def _as_value(value: str) -> str:
    """``value`` where it stands as the value of a name: ``name=v``, ``name: v``, ``"name": "v"``."""
    return rf"(\w(?:=|:\s+|[\"']\s*:\s*|[\"']=)[\"']?){re.escape(value)}(?!{_WORD})"


@dataclass(frozen=True)
class Redactor:
    """Masks the known values of one run's credentials (see the module docstring) and secret patterns."""

    everywhere: tuple[str, ...] = ()  # random-looking values
    tokens: tuple[str, ...] = ()  # values of secret-named keys
    values: tuple[str, ...] = ()  # other values, masked in value position only

    @classmethod
    def of(cls, credentials: Mapping[str, str], secrets: Iterable[str] = ()) -> Redactor:
        """A redactor for a run whose credentials (environment variables) are ``credentials``, and
        which knows ``secrets`` without names (other requests' outputs: as :meth:`secrets` masks them)."""
        known = cls.secrets(secrets)
        everywhere, tokens, values = set(known.everywhere), set(known.tokens), set()
        for key, value in credentials.items():
            if not value or not value.strip():
                continue
            if looks_random(value):
                everywhere.add(value)
            elif _SECRET_KEY.search(key):
                tokens.add(value)
            else:
                values.add(value)
        return cls(_longest_first(everywhere), _longest_first(tokens), _longest_first(values))

    @classmethod
    def secrets(cls, secrets: Iterable[str]) -> Redactor:
        """A redactor for values known to be secret (no names): random ones everywhere, others as tokens."""
        found = {s for s in secrets if s and s.strip()}
        random = {s for s in found if looks_random(s)}
        return cls(_longest_first(random), _longest_first(found - random))

    def __call__(self, text: str) -> str:
        """``text`` with the known values and the secret-looking patterns masked."""
        for value in self.everywhere:
            text = text.replace(value, MASK)
        for value in self.tokens:
            text = re.sub(_token(value), MASK, text)
        for value in self.values:
            text = re.sub(_as_value(value), lambda m: m.group(1) + MASK, text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
        return text


def _longest_first(values: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so a value containing another is masked whole.
    return tuple(sorted(set(values), key=lambda v: (-len(v), v)))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value (see :meth:`Redactor.secrets`) and secret pattern masked."""
    return Redactor.secrets(secrets)(text)


def tail(text: str, lines: int = 12, limit: int = 1500) -> str:
    """The last meaningful lines of tool output (boxes and blank lines dropped), capped in length."""
    kept = [ln.strip(" │╷╵") for ln in text.splitlines()]
    kept = [ln for ln in kept if ln.strip()]
    result = "\n".join(kept[-lines:])
    return result[-limit:]
