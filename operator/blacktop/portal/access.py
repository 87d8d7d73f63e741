"""Who may see what in the portal: the cluster decides, never the portal.

Two modes (``BLACKTOP_PORTAL_AUTH``):

* ``token`` (the default, and the chart's): a visitor signs in with a Kubernetes token (a
  ServiceAccount token from ``kubectl create token``, or an OIDC ID token the apiserver accepts),
  pasted once into the sign-in form or sent as ``Authorization: Bearer`` by a proxy. The apiserver
  says who it is (TokenReview); for every part of a page the portal asks the apiserver whether that
  person may ``list`` what it comes from (SubjectAccessReview): golden paths for the catalog,
  environments for the environment rows, ServiceRequests *in that namespace* for its requests. A
  tenant therefore sees in the portal exactly what ``kubectl get`` would show them: another team's
  request names, stages and messages stay hidden. The request builder offers the environments where
  they may ``create`` ServiceRequests and checks the request with their identity, team boundary
  included.
* ``none``: no sign-in and everything visible, allowed only on a loopback address (``make run``
  on a developer's machine, where the admin kubeconfig is at hand anyway).

Answers are cached briefly (as the apiserver's own webhook authenticator and authorizer do), so a
page costs at most a few reviews however many objects it lists; a revoked token or binding takes
effect within :data:`REVIEW_TTL` seconds. A review that fails (apiserver unreachable) denies.

The browser keeps only an opaque session id (HttpOnly, SameSite=Strict cookie); the token stays in
the operator's memory, is never logged and never shown. Sessions end after :data:`SESSION_TTL`, at
sign-out, or when the operator restarts.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from blacktop.api.kinds import GROUP
from blacktop.kube.client import Client, gather
from blacktop.kube.reviews import Identity, access_allowed, review_token

logger = logging.getLogger(__name__)

REVIEW_TTL = 30.0  # seconds a TokenReview or SubjectAccessReview answer is reused
SESSION_TTL = 8 * 3600.0
MAX_ENTRIES = 4096  # bound on cached answers and on sessions
MAX_TOKEN = 16 * 1024  # longer "tokens" are refused unread
COOKIE = "blacktop_portal_session"

K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """A small LRU of answers that expire (``clock`` is injectable for tests)."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl, self.clock = ttl, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self.clock():
            self._entries.pop(key, None)
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        self._entries[key] = (self.clock() + (self.ttl if ttl is None else ttl), value)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)


TokenReviewer = Callable[[str], Awaitable[Identity | None]]
AccessReviewer = Callable[[Identity, str, str, str], Awaitable[bool]]  # who, verb, resource, namespace


@dataclass
class Viewer:
    """The visitor of one page: who they are (None in ``none`` mode) and what they may list."""

    identity: Identity | None
    _may: Callable[[str, str, str], Awaitable[bool]] = field(repr=False)

    @property
    def signed_in(self) -> bool:
        return self.identity is not None

    async def may(self, verb: str, resource: str, namespace: str = "") -> bool:
        """Whether the visitor may ``verb`` Blacktop's ``resource`` (in ``namespace``; empty: cluster-wide)."""
        return await self._may(verb, resource, namespace)

    async def namespaces_where(self, verb: str, resource: str, namespaces: Iterable[str]) -> set[str]:
        """The namespaces among ``namespaces`` where the visitor may ``verb`` ``resource``."""
        wanted = sorted(set(namespaces))
        if await self.may(verb, resource):  # cluster-wide: one review instead of one per namespace
            return set(wanted)
        answers = await gather(*(self.may(verb, resource, ns) for ns in wanted))
        return {ns for ns, allowed in zip(wanted, answers, strict=True) if allowed}


def everyone() -> Viewer:
    """``none`` mode: no identity, everything visible."""

    async def always(verb: str, resource: str, namespace: str) -> bool:
        return True

    return Viewer(None, always)


class Access:
    """Sign-in, sessions and permission checks of ``token`` mode."""

    def __init__(
        self,
        review_token: TokenReviewer,
        review_access: AccessReviewer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review_token = review_token
        self._review_access = review_access
        self._identities: _Cache[str, Identity | None] = _Cache(REVIEW_TTL, clock)
        self._decisions: _Cache[tuple[str, tuple[str, ...], str, str, str], bool] = _Cache(REVIEW_TTL, clock)
        self._sessions: _Cache[str, str] = _Cache(SESSION_TTL, clock)

    @classmethod
    def through(cls, client: Client) -> Access:
        """Reviews asked of the apiserver behind ``client``."""

        async def token(text: str) -> Identity | None:
            return await review_token(client, text)

        async def access(who: Identity, verb: str, resource: str, namespace: str) -> bool:
            return await access_allowed(client, who, verb=verb, group=GROUP, resource=resource, namespace=namespace)

        return cls(token, access)

    async def identify(self, token: str) -> Identity | None:
        """Who ``token`` belongs to (None: not accepted, or the apiserver could not be asked)."""
        if not token or len(token) > MAX_TOKEN:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()  # the answer cache holds digests, not tokens
        found, identity = self._identities.get(key)
        if found:
            return identity
        try:
            identity = await self._review_token(token)
        except Exception as exc:  # apiserver unreachable or refusing: fail closed, whatever the cause
            logger.warning("portal: TokenReview failed, treating the visitor as signed out: %s", exc)
            return None
        # Refusals are remembered briefly too, so a stream of bad tokens does not hammer the apiserver.
        self._identities.put(key, identity, None if identity else 5.0)
        return identity

    def viewer(self, identity: Identity) -> Viewer:
        async def may(verb: str, resource: str, namespace: str) -> bool:
            key = (identity.username, identity.groups, verb, resource, namespace)
            found, allowed = self._decisions.get(key)
            if found:
                return bool(allowed)
            try:
                allowed = await self._review_access(identity, verb, resource, namespace)
            except Exception as exc:  # fail closed: what cannot be checked is not shown
                logger.warning("portal: SubjectAccessReview failed, hiding what it guards: %s", exc)
                return False
            self._decisions.put(key, allowed)
            return allowed

        return Viewer(identity, may)

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, token: str) -> str:
        """A new session for an accepted token; returns the opaque id for the cookie."""
        session = secrets.token_urlsafe(32)
        self._sessions.put(session, token)
        return session

    def token_of(self, session: str) -> str | None:
        found, token = self._sessions.get(session)
        return token if found else None

    def close_session(self, session: str) -> None:
        self._sessions.pop(session)
