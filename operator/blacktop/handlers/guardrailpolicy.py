"""Kopf wiring of the GuardrailPolicy reconciler: compile on change, say in status whether it is active."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.controllers.guardrailpolicy import reconcile_policy
from blacktop.handlers.startup import context_of

GROUP, VERSION, PLURAL = "platform.blacktop.dev", "v1alpha1", "guardrailpolicies"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def guardrail_policy_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    await reconcile_policy(context_of(memo), name)
