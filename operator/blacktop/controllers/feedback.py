"""Feedback: the reconciler saying how a rating is counted, and `blacktop feedback` giving one.

A rating counts for the team of the Environment whose namespace it is in; outside an environment's
namespace it is not counted, and its status says where it belongs. A rating of a golden path that
is not (or no longer) in the catalog still counts for the platform's score, and says so.

`blacktop feedback` creates the Feedback with the developer's own credentials, named after the
target, the quarter and a hash of the developer's user name, so rating again in the same quarter
replaces their earlier rating instead of counting twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import parse_time
from blacktop.api.conditions import Reason
from blacktop.api.feedback import FeedbackSpec, FeedbackStatus, category, quarter_of
from blacktop.api.kinds import API_VERSION
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.client import KubeClient, kubeconfig_namespace
from blacktop.kube.errors import ForbiddenError, KubeApiError
from blacktop.kube.resources import ENVIRONMENTS, FEEDBACKS, GOLDENPATHS, resource_for

JSON = dict[str, Any]


async def reconcile_feedback(ctx: Context, body: JSON) -> FeedbackStatus:
    """Write the status of one Feedback (only when it changed)."""
    tracker = StatusTracker(body, FeedbackStatus, now=ctx.now())
    meta = body["metadata"]
    try:
        spec = FeedbackSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        tracker.not_ready(Reason.INVALID_SPEC, f"spec is invalid: {exc.errors()[0]['msg']}", stalled=True)
        return await tracker.write(ctx.client, FEEDBACKS)
    status = tracker.status
    status.quarter = quarter_of(parse_time(meta["creationTimestamp"]))
    status.category = category(spec.score)
    env = await lookup.environment_of(ctx, str(meta.get("namespace") or ""))
    if env is None:
        status.team = None
        tracker.not_ready(
            Reason.ENVIRONMENT_NOT_FOUND,
            f"not counted: namespace {meta.get('namespace')} is not an Environment's; create Feedback in your "
            "environment's namespace (kubectl get environments), where it counts for your team",
            stalled=True,
        )
        return await tracker.write(ctx.client, FEEDBACKS)
    status.team = str((env.get("spec") or {}).get("team") or "")
    counted = f"counted for team {status.team} in {status.quarter} as a {status.category.value}"
    if spec.golden_path and await ctx.client.get(GOLDENPATHS, spec.golden_path) is None:
        message = (
            f"{counted} of the platform only: golden path {spec.golden_path!r} is not in the catalog "
            "(kubectl get goldenpaths)"
        )
        tracker.not_ready(Reason.GOLDEN_PATH_NOT_FOUND, message, stalled=True)
        return await tracker.write(ctx.client, FEEDBACKS)
    target = f"golden path {spec.golden_path}" if spec.golden_path else "the platform"
    tracker.ready(f"{counted} ({target}, score {spec.score})", Reason.COUNTED)
    return await tracker.write(ctx.client, FEEDBACKS)


SELF_SUBJECT_REVIEWS = resource_for("authentication.k8s.io/v1", "SelfSubjectReview")
FIELD_MANAGER = "blacktop-feedback"


class FeedbackError(Exception):
    """A rating that cannot be given; the message says what to do instead."""


@dataclass(frozen=True)
class GivenFeedback:
    """A rating as it was recorded."""

    name: str
    namespace: str
    score: int
    golden_path: str | None

    def thanks(self) -> str:
        target = f"golden path {self.golden_path}" if self.golden_path else "the platform"
        return (
            f"thanks: {self.score}/10 for {target} recorded as feedback/{self.name} in {self.namespace} "
            "(your team and the platform team can read it; rating again this quarter replaces it)"
        )


async def _username(client: KubeClient) -> str | None:
    """Who the credentials belong to (SelfSubjectReview), or None if the cluster will not say."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    try:
        answer = await client.request("POST", SELF_SUBJECT_REVIEWS.path(), body=review)
    except KubeApiError:
        return None
    name = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
    return str(name) if name else None


def feedback_name(golden_path: str | None, quarter: str, username: str) -> str:
    """``<golden path or platform>-<quarter>-<hash of the user>``: one rating per developer, target and quarter."""
    target = (golden_path or "platform")[:40].rstrip(".-")
    digest = hashlib.sha256(username.encode()).hexdigest()[:10]
    return f"{target}-{quarter.lower()}-{digest}"


async def give_feedback(
    client: KubeClient,
    *,
    score: int,
    golden_path: str | None = None,
    comment: str | None = None,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    now: datetime | None = None,
) -> GivenFeedback:
    """Create (or replace) the caller's Feedback in their environment's namespace."""
    namespace = namespace or kubeconfig_namespace(kubeconfig)
    if not namespace:
        raise FeedbackError("say which environment you rate from: -n <your environment> (kubectl get environments)")
    spec: dict[str, Any] = {"score": score}
    if golden_path:
        spec["goldenPath"] = golden_path
    if comment:
        spec["comment"] = comment
    try:
        FeedbackSpec.model_validate(spec)
    except ValidationError as exc:
        raise FeedbackError(f"invalid feedback: {exc.errors()[0]['msg']}") from None
    if await client.get(ENVIRONMENTS, namespace) is None:
        raise FeedbackError(
            f"{namespace} is not an environment's namespace: rate from yours (kubectl get environments)"
        )
    if golden_path and await client.get(GOLDENPATHS, golden_path) is None:
        raise FeedbackError(f"golden path {golden_path!r} is not in the catalog (kubectl get goldenpaths)")
    metadata: dict[str, Any] = {"namespace": namespace}
    username = await _username(client)
    quarter = quarter_of(now or datetime.now(UTC))
    if username:
        metadata["name"] = feedback_name(golden_path, quarter, username)
    else:
        metadata["generateName"] = f"{(golden_path or 'platform')[:40].rstrip('.-')}-{quarter.lower()}-"
    body = {"apiVersion": API_VERSION, "kind": "Feedback", "metadata": metadata, "spec": spec}
    try:
        if username:
            created = await client.apply(body, field_manager=FIELD_MANAGER)
        else:
            created = await client.create(body)
    except ForbiddenError as exc:
        raise FeedbackError(
            f"you may not give feedback in {namespace}: only its team and the platform team can ({exc.message})"
        ) from None
    except KubeApiError as exc:
        raise FeedbackError(exc.message) from None
    return GivenFeedback(created["metadata"]["name"], namespace, score, golden_path)
