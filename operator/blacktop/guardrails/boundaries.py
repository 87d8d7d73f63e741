"""Team boundaries: who may create or change an Environment, and a ServiceRequest in it. Pure.

A user may act for a team only as a member of the team's group (``Settings.team_group``); members
of a platform-admin group may act for any team. For ServiceRequests the environment's ``owners``
count as members too (they get the editor role in its namespace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _user(userinfo: Mapping[str, Any] | None) -> tuple[str, set[str]]:
    info = userinfo or {}
    return str(info.get("username") or ""), {str(g) for g in info.get("groups") or []}


def environment_denial(
    userinfo: Mapping[str, Any] | None, team: str, team_group: str, admin_groups: Iterable[str]
) -> str | None:
    """Why this user may not create/change an Environment of ``team`` (None: they may)."""
    username, groups = _user(userinfo)
    if groups & set(admin_groups) or team_group in groups:
        return None
    return (
        f"denied by team boundary: user {username or '(unknown)'} is not in group {team_group!r} of team "
        f"{team!r}; ask a member of that team or a platform admin to create the Environment"
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
