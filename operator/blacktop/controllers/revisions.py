"""Publishing and reading GoldenPathRevisions: one per change of what a golden path runs.

:func:`publish` is called by the GoldenPath reconciler once the module as the spec names it now has
passed every check: when its content (builders.revisions) differs from the latest revision, it writes
revision N+1, posts a ``RevisionCreated`` Event and prunes revisions beyond the golden path's
``revisionHistoryLimit`` that no request runs or pins and the rollout does not target. Revisions are
owned by their golden path, so deleting it deletes them. :func:`at_revision` is what provisioning
asks: which revision does this request run, and what does the golden path look like at it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from blacktop.api.conditions import Reason
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.goldenpathrevision import GoldenPathRevisionSpec
from blacktop.builders import naming, rollout
from blacktop.builders import revisions as builders
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.modulesource import Found, keep_folder
from blacktop.controllers.views import GoldenPathView
from blacktop.kube import events
from blacktop.kube.errors import ConflictError
from blacktop.kube.resources import GOLDENPATHREVISIONS

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
_NAME_ATTEMPTS = 5


async def history(ctx: Context, golden_path: JSON) -> list[GoldenPathRevisionSpec]:
    """The revisions of this golden path (this incarnation of it: owned by its uid), oldest first."""
    name, uid = golden_path["metadata"]["name"], golden_path["metadata"].get("uid", "")
    found = await ctx.client.list(GOLDENPATHREVISIONS, label_selector=f"{naming.LABEL_GOLDEN_PATH}={name}")
    result = []
    for obj in found:
        if uid and not naming.is_owned_by(obj, uid):
            continue  # left by a deleted golden path of the same name; garbage collection takes it
        try:
            result.append(GoldenPathRevisionSpec.model_validate(obj.get("spec") or {}))
        except ValidationError:
            logger.warning("ignoring unreadable GoldenPathRevision %s", obj["metadata"]["name"])
    return sorted(result, key=lambda r: r.revision)


def in_use(requests: Iterable[JSON]) -> set[int]:
    """Revisions some request runs or pins."""
    used: set[int] = set()
    for request in requests:
        for value in ((request.get("status") or {}).get("revision"), (request.get("spec") or {}).get("revision")):
            if isinstance(value, int):
                used.add(value)
    return used


async def publish(
    ctx: Context, golden_path: JSON, spec: GoldenPathSpec, found: Found, requests: list[JSON]
) -> tuple[GoldenPathRevisionSpec, list[GoldenPathRevisionSpec]]:
    """The latest revision after making one for ``found`` if it differs; and the revisions kept."""
    name = golden_path["metadata"]["name"]
    known = await history(ctx, golden_path)
    latest = known[-1] if known else None
    candidate = builders.revision_spec(
        name, (latest.revision if latest else 0) + 1, spec, found.info.digest, found.commit
    )
    if latest is not None and latest.digest == candidate.digest:
        await keep_folder(ctx, spec, found.info.digest)  # after an operator restart: keep the files again
        return latest, known
    await keep_folder(ctx, spec, found.info.digest)
    for _ in range(_NAME_ATTEMPTS):
        try:
            await ctx.client.create(builders.revision_object(golden_path, candidate))
            break
        except ConflictError:  # a revision of a deleted namesake not yet collected: take the next number
            candidate = candidate.model_copy(update={"revision": candidate.revision + 1})
    else:
        raise RuntimeError(f"could not find a free revision name for golden path {name}")
    known.append(candidate)
    strategy = spec.rollout.strategy.value
    await events.post_event(
        ctx.client,
        golden_path,
        events.NORMAL,
        "RevisionCreated",
        f"{builders.describe(candidate)}; {strategy} rollout to existing requests",
    )
    logger.info("golden path %s: %s", name, builders.describe(candidate))
    return candidate, await prune(ctx, golden_path, spec, known, requests)


async def prune(
    ctx: Context, golden_path: JSON, spec: GoldenPathSpec, known: list[GoldenPathRevisionSpec], requests: list[JSON]
) -> list[GoldenPathRevisionSpec]:
    """Delete revisions beyond the history limit that nothing uses; returns those kept."""
    keep = in_use(requests) | ({spec.rollout.revision} if spec.rollout.revision else set())
    doomed = set(builders.to_prune([r.revision for r in known], keep, spec.revision_history_limit))
    for number in sorted(doomed):
        await ctx.client.delete(GOLDENPATHREVISIONS, builders.revision_name(golden_path["metadata"]["name"], number))
    return [r for r in known if r.revision not in doomed]


def target_of(spec: GoldenPathSpec, known: list[GoldenPathRevisionSpec]) -> int | None:
    """The revision being rolled out: ``spec.rollout.revision``, else the latest."""
    if spec.rollout.revision is not None:
        return spec.rollout.revision
    return known[-1].revision if known else None


async def at_revision(
    ctx: Context, request: JSON, golden: GoldenPathView, *, revision: int | None = None
) -> GoldenPathView:
    """The golden path as ``request`` runs it: at ``revision`` if given (a rollout moving it), else its
    pin, else the revision it last applied, else — never applied — the rollout's target. A golden path
    without revisions (not reconciled since revisions came) is returned as it is. Failure
    (RevisionNotFound) when the revision wanted does not exist."""
    known = await history(ctx, golden.body)
    target = target_of(golden.spec, known)
    if target is None:
        return golden
    pinned = (request.get("spec") or {}).get("revision")
    applied = (request.get("status") or {}).get("revision")
    wanted = revision or rollout.revision_for(pinned, applied, target)
    chosen = next((r for r in known if r.revision == wanted), None)
    if chosen is None:
        numbers = ", ".join(str(r.revision) for r in known) or "none"
        raise Failure(
            Reason.REVISION_NOT_FOUND,
            f"golden path {golden.name} has no revision {wanted} (kept: {numbers}); set spec.revision to one of "
            "them, or remove it to follow the golden path's rollouts",
            delay=ctx.settings.blocked_retry_seconds,
        )
    return dataclasses.replace(
        golden, spec=builders.spec_at(golden.spec, chosen), module_digest=chosen.module_digest, revision=chosen
    )
