"""Team boundaries: who may create or change an Environment, and a ServiceRequest in it. Pure.

A user may act for a team only as a member of the team's group (``Settings.team_group``); members
of a platform-admin group may act for any team. For ServiceRequests the environment's ``owners``
count as members too (they get the editor role in its namespace). An Environment's boundary holds
for every operation: creating it, changing its spec or only its metadata (labels, annotations,
finalizers), and deleting it. Names are reserved too: an Environment becomes a namespace of its
name, so the operator's own namespace, the monitoring namespace (which every isolated environment
admits) and the platform team's reserved names can never be one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

# Never an Environment's name, whatever the settings say: Kubernetes' own namespaces.
SYSTEM_NAMESPACES = {"default": "Kubernetes' default namespace", "kube-*": "Kubernetes' system namespaces"}
_VERBS = {"CREATE": "create", "UPDATE": "change", "DELETE": "delete"}


def _user(userinfo: Mapping[str, Any] | None) -> tuple[str, set[str]]:
    info = userinfo or {}
    return str(info.get("username") or ""), {str(g) for g in info.get("groups") or []}


def is_admin(userinfo: Mapping[str, Any] | None, admin_groups: Iterable[str]) -> bool:
    """Whether the user is in a platform-admin group."""
    return bool(_user(userinfo)[1] & set(admin_groups))


def environment_denial(
    userinfo: Mapping[str, Any] | None,
    team: str,
    team_group: str,
    admin_groups: Iterable[str],
    operation: str = "CREATE",
) -> str | None:
    """Why this user may not create, change or delete (``operation``) an Environment of ``team`` (None: they may)."""
    username, groups = _user(userinfo)
    if groups & set(admin_groups) or team_group in groups:
        return None
    verb = _VERBS.get(operation, "change")
    return (
        f"denied by team boundary: user {username or '(unknown)'} is not in group {team_group!r} of team "
        f"{team!r}; ask a member of that team or a platform admin to {verb} the Environment"
    )


def reserved_names(operator_namespace: str, monitoring_namespace: str, extra: Iterable[str]) -> dict[str, str]:
    """Names (or shell patterns) no Environment may take, each with what it is."""
    return {
        **SYSTEM_NAMESPACES,
        operator_namespace: "the namespace Blacktop itself runs in, holding every request's state",
        monitoring_namespace: "the monitoring namespace, which every isolated environment admits",
        **{pattern: "reserved by the platform team" for pattern in extra},
    }


def reserved_denial(name: str, reserved: Mapping[str, str]) -> str | None:
    """Why no Environment may be called ``name``; ``reserved`` is :func:`reserved_names`."""
    pattern = next((p for p in reserved if fnmatchcase(name, p)), None)
    if pattern is None:
        return None
    what = reserved[pattern]
    shown = name if pattern == name else f"{name} (matches {pattern})"
    return (
        f"denied: the name {shown} is reserved ({what}); an Environment becomes a namespace of its name, so "
        "choose another name"
    )


def request_denial(
    userinfo: Mapping[str, Any] | None, env: Mapping[str, Any], team_group: str, admin_groups: Iterable[str]
) -> str | None:
    """Why this user may not create/change a ServiceRequest in ``env`` (None: they may)."""
    username, groups = _user(userinfo)
    if groups & set(admin_groups) or team_group in groups:
        return None
    for owner in (env.get("spec") or {}).get("owners") or []:
        kind, name = owner.get("kind"), owner.get("name")
        if (kind == "User" and name == username) or (kind == "Group" and name in groups):
            return None
    team = (env.get("spec") or {}).get("team")
    return (
        f"denied by team boundary: user {username or '(unknown)'} is neither in group {team_group!r} of team "
        f"{team!r} nor an owner of Environment {env.get('metadata', {}).get('name')!r}"
    )
