"""Asking the apiserver who a token belongs to (TokenReview) and what they may do (SubjectAccessReview).

The portal identifies its visitors this way, so it answers with the cluster's own authentication
(ServiceAccount tokens, OIDC, whatever the apiserver accepts) and its own authorization (RBAC),
never with rules of its own. Both calls create nothing: the apiserver answers in the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blacktop.kube.client import Client


@dataclass(frozen=True)
class Identity:
    """A user as the apiserver authenticated them."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def userinfo(self) -> dict[str, Any]:
        """The shape of an admission request's userInfo."""
        return {"username": self.username, "groups": list(self.groups), "uid": self.uid}


async def review_token(client: Client, token: str) -> Identity | None:
    """The identity the token stands for, or None if the apiserver does not accept it."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    status = (await client.create(body)).get("status") or {}
    if not status.get("authenticated"):
        return None
    user = status.get("user") or {}
    return Identity(
        username=str(user.get("username") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        uid=str(user.get("uid") or ""),
        extra={str(k): tuple(str(x) for x in v) for k, v in (user.get("extra") or {}).items()},
    )


async def access_allowed(
    client: Client, who: Identity, *, verb: str, group: str, resource: str, namespace: str = ""
) -> bool:
    """Whether RBAC (or whatever authorizes the cluster) lets ``who`` do ``verb`` on ``resource``
    in ``namespace`` (empty: in every namespace / cluster-scoped)."""
    spec: dict[str, Any] = {
        "user": who.username,
        "groups": list(who.groups),
        "resourceAttributes": {"group": group, "resource": resource, "verb": verb, "namespace": namespace},
    }
    if who.uid:
        spec["uid"] = who.uid
    if who.extra:
        spec["extra"] = {k: list(v) for k, v in who.extra.items()}
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    status = (await client.create(body)).get("status") or {}
    return bool(status.get("allowed"))
