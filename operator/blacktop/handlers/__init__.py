"""Kopf handlers: the only code that imports kopf.

Each handler is thin: it decodes what it needs, calls one idempotent reconciler from
:mod:`blacktop.controllers`, and never returns a value (Kopf would write it into status). Nothing
registers on import of this package: :func:`register` does, with the operator's Settings.
"""

from __future__ import annotations

import importlib

from blacktop.config import Settings
from blacktop.handlers import wiring

MODULES = (
    "startup",
    "budget",
    "environment",
    "goldenpath",
    "guardrailpolicy",
    "leftovers",
    "metrics",
    "portal",
    "notifications",
    "scorecard",
    "servicerequest",
)


def register(settings: Settings) -> None:
    """Register every handler with Kopf's default registry, timers at the intervals of ``settings``."""
    wiring.use(settings)
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
