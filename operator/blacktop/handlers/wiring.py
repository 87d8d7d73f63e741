"""What every Kopf handler module shares: the operator's Settings, its Context, and the one
translation of a controller's Failure into Kopf's retry.

The Settings are the object the CLI built (read once from the environment): :func:`register` hands
them to the handler modules before they are imported, because Kopf fixes timer intervals when a
handler is registered, and :func:`blacktop.handlers.main.run_operator` puts the same object into
Kopf's memo, where start-up builds the Context from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kopf

from blacktop.config import Settings
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.kube.errors import UnavailableError

_settings: Settings | None = None


def use(settings: Settings) -> None:
    """Make ``settings`` the ones handler modules register with (before they are imported)."""
    global _settings  # noqa: PLW0603 (set once per process, before registration)
    if _settings is not None and _settings != settings:
        raise RuntimeError("the handlers are already registered with other settings")
    _settings = settings


def settings() -> Settings:
    """The settings the handlers are registered with."""
    if _settings is None:
        raise RuntimeError("register the handlers with blacktop.handlers.register(settings) before importing them")
    return _settings


def context_of(memo: Any) -> Context:
    """The shared reconcile context that start-up put into Kopf's memo."""
    ctx: Context = memo.ctx
    return ctx


def started_context(memo: Any) -> Context | None:
    """The context, for a start-up handler registered after handlers.startup. Kopf runs start-up
    handlers in registration order in each pass, so the context exists here unless `configure`
    failed (permanently) in this pass: then None, and the handler starts nothing. The operator stops
    with that one failure, not with an ERROR (or an endless retry) from every handler after it."""
    return context_of(memo) if getattr(memo, "ctx", None) is not None else None


@asynccontextmanager
async def retrying(retry_unavailable: float = 2.0) -> AsyncIterator[None]:
    """A controller's Failure becomes Kopf's TemporaryError with the Failure's delay: the one place
    where "not done yet" is said to Kopf (its message is in Kopf's log; status already says it). An
    API outage a controller did not turn into a Failure is retried after ``retry_unavailable``."""
    try:
        yield
    except Failure as failure:
        raise kopf.TemporaryError(f"{failure.reason}: {failure.message}", delay=failure.delay) from None
    except UnavailableError as exc:
        raise kopf.TemporaryError(f"ApiUnavailable: {exc}", delay=retry_unavailable) from None


@asynccontextmanager
async def reconciling(memo: Any, key: str) -> AsyncIterator[Context]:
    """The context, holding the lock of the object ``key`` (kind/namespace/name), failures translated."""
    ctx = context_of(memo)
    async with retrying(ctx.settings.infrastructure_backoff_base_seconds * 2), ctx.lock(key):
        yield ctx
