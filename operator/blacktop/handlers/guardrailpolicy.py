"""Kopf wiring of the GuardrailPolicy reconciler: compile on change, say in status whether it is active."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import GROUP, GUARDRAIL_POLICY, VERSION
from blacktop.controllers.guardrailpolicy import reconcile_policy
from blacktop.handlers.wiring import context_of

PLURAL = GUARDRAIL_POLICY.plural


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def guardrail_policy_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    await reconcile_policy(context_of(memo), name)
