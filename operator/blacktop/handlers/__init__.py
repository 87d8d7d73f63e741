"""Kopf handlers: the only code that imports kopf. Importing this package registers them all.

Each handler is thin: it decodes what it needs, calls one idempotent reconciler from
:mod:`blacktop.controllers`, and never returns a value (Kopf would write it into status).
"""

from blacktop.handlers import (
    admission,
    budget,
    environment,
    goldenpath,
    guardrailpolicy,
    leftovers,
    metrics,
    servicerequest,
    startup,
)

__all__ = [
    "admission",
    "budget",
    "environment",
    "goldenpath",
    "guardrailpolicy",
    "leftovers",
    "metrics",
    "servicerequest",
    "startup",
]
