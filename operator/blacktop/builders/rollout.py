"""Rollouts, pure: which revision a request runs, what the next step of a rollout is, and what each
request's ``UpgradeAvailable`` condition says.

The rollout of a golden path's target revision (``spec.rollout.revision``, default the latest) is
decided again on every look from the requests as they are (level-based, like a Deployment): there
is no plan stored anywhere that could go stale. A request *follows* rollouts when it was provisioned
and does not pin a revision (``spec.revision``); pinned requests never move. Under ``Automatic`` the
followers move tier by tier (dev, then staging, then prod: a request whose environment is gone
counts as prod, the most careful), ``batchSize`` at a time, in name order; a tier starts only when
every follower of the tiers before it runs the target and is Ready. A halt (an upgrade whose plan
failed, was denied, or whose apply failed) stops the rollout until the halted request changes, the
target changes, or the halted request is gone. Under ``Manual`` nothing moves by itself: owners
move their request by setting ``spec.revision``. A rollback is the same walk to an older target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from blacktop.api.common import Tier
from blacktop.api.conditions import Reason
from blacktop.api.goldenpath import RolloutHalt, RolloutPhase, RolloutStrategy, TierProgress

TIER_ORDER = (Tier.DEV.value, Tier.STAGING.value, Tier.PROD.value)


@dataclass(frozen=True)
class Member:
    """A request of the golden path, as the rollout sees it."""

    key: str  # namespace/name
    tier: str | None  # its environment's tier (None: the environment is gone)
    revision: int | None  # the revision it was last applied with
    pinned: int | None = None  # spec.revision
    provisioned: bool = False  # applied at least once
    ready: bool = False  # Ready=True for its current generation
    generation: int = 1

    @property
    def follows(self) -> bool:
        """Whether rollouts move it: provisioned and not pinned."""
        return self.provisioned and self.pinned is None

    @property
    def rank(self) -> int:
        """Its tier's place in the rollout order (unknown tiers last, with prod)."""
        return TIER_ORDER.index(self.tier) if self.tier in TIER_ORDER else len(TIER_ORDER) - 1


@dataclass(frozen=True)
class Step:
    """What the rollout does now, and how it stands."""

    phase: RolloutPhase
    tier: str | None = None
    batch: tuple[str, ...] = ()  # plan these, then apply them
    waiting_for: tuple[str, ...] = ()  # moved but not Ready yet: the next tier waits for them
    tiers: tuple[TierProgress, ...] = field(default_factory=tuple)
    pinned: int = 0

    @property
    def progress(self) -> str:
        """``dev 2/2, staging 1/3, prod 0/4`` (tiers without requests left out)."""
        return ", ".join(f"{t.tier} {t.updated}/{t.total}" for t in self.tiers if t.total) or "no requests to move"


def revision_for(pinned: int | None, applied: int | None, target: int) -> int:
    """The revision a request runs when it is reconciled: its pin, else the one it already runs (a
    rollout moves it explicitly), else — never applied yet — the target."""
    if pinned is not None:
        return pinned
    return applied if applied is not None else target


def halt_still_holds(halt: RolloutHalt | None, target: int, members: Iterable[Member]) -> bool:
    """Whether a recorded halt still stops the rollout: same target, and the halted request still
    exists, has not changed since, and still does not run the target."""
    if halt is None or halt.revision != target:
        return False
    for member in members:
        if member.key == halt.request:
            return member.generation == halt.generation and member.revision != target
    return False


def _progress(followers: Sequence[Member], target: int) -> tuple[TierProgress, ...]:
    rows = []
    for rank, tier in enumerate(TIER_ORDER):
        in_tier = [m for m in followers if m.rank == rank]
        rows.append(TierProgress(tier=tier, updated=sum(m.revision == target for m in in_tier), total=len(in_tier)))
    return tuple(rows)


def next_step(
    members: Sequence[Member], target: int, strategy: RolloutStrategy, batch_size: int, *, halted: bool = False
) -> Step:
    """The next step of the rollout of ``target``. Pure and total: any input gives an answer."""
    followers = sorted((m for m in members if m.follows), key=lambda m: (m.rank, m.key))
    tiers = _progress(followers, target)
    pinned = sum(1 for m in members if m.pinned is not None)
    behind = [m for m in followers if m.revision != target]
    if not behind:
        done = [m.key for m in followers if not m.ready]
        phase = RolloutPhase.PROGRESSING if done and strategy == RolloutStrategy.AUTOMATIC else RolloutPhase.COMPLETE
        return Step(phase=phase, waiting_for=tuple(done), tiers=tiers, pinned=pinned)
    tier = TIER_ORDER[behind[0].rank]
    if strategy == RolloutStrategy.MANUAL:
        return Step(phase=RolloutPhase.WAITING, tier=tier, tiers=tiers, pinned=pinned)
    if halted:
        return Step(phase=RolloutPhase.HALTED, tier=tier, tiers=tiers, pinned=pinned)
    # Health gate: every moved follower of this tier and the tiers before it must be Ready first.
    unhealthy = tuple(m.key for m in followers if m.rank <= behind[0].rank and m.revision == target and not m.ready)
    if unhealthy:
        return Step(phase=RolloutPhase.PROGRESSING, tier=tier, waiting_for=unhealthy, tiers=tiers, pinned=pinned)
    batch = tuple(m.key for m in behind if m.rank == behind[0].rank)[:batch_size]
    return Step(phase=RolloutPhase.PROGRESSING, tier=tier, batch=batch, tiers=tiers, pinned=pinned)


def _pinned_condition(pinned: int, latest: int, kubectl_hint: str) -> tuple[bool, str, str]:
    if latest > pinned:
        command = kubectl_hint.format(revision=latest)
        return (
            True,
            Reason.PINNED,
            f"pinned to revision {pinned}; revision {latest} is available: `{command}` moves it "
            "(remove spec.revision to follow the golden path's rollouts)",
        )
    return False, Reason.UP_TO_DATE, f"pinned to revision {pinned}, the latest"


def _moving_message(member: Member, applied: int, target: int, step: Step, halt: RolloutHalt | None) -> tuple[str, str]:
    """(reason, message) for a follower an Automatic rollout is still to move."""
    direction = "upgrade" if target > applied else "rollback"
    if step.phase == RolloutPhase.HALTED and halt is not None:
        text = (
            f"runs revision {applied}; the {direction} to revision {target} is halted: {halt.request} "
            f"({halt.tier}) {halt.reason}: {halt.message}"
        )
        return Reason.ROLLOUT_HALTED, text[:1024]
    if member.key in step.batch:
        return Reason.ROLLOUT_PENDING, f"runs revision {applied}; moving to revision {target} now"
    where = f"; the rollout is at tier {step.tier}" if step.tier else ""
    return Reason.ROLLOUT_PENDING, (
        f"runs revision {applied}; revision {target} rolls out tier by tier "
        f"(this request: {member.tier or 'prod'}){where}"
    )


def upgrade_condition(
    member: Member,
    *,
    latest: int,
    target: int,
    strategy: RolloutStrategy,
    step: Step,
    halt: RolloutHalt | None,
    kubectl_hint: str,
) -> tuple[bool, str, str]:
    """(status, reason, message) of a request's ``UpgradeAvailable``: True when a different revision
    is due for it (the rollout's, or a newer one than its pin). ``kubectl_hint`` is the command that
    moves it, with ``{revision}`` left to fill in."""
    if member.pinned is not None:
        return _pinned_condition(member.pinned, latest, kubectl_hint)
    applied = member.revision
    if applied is None:
        return False, Reason.UP_TO_DATE, "not provisioned yet"
    if applied == target:
        note = "the latest" if target == latest else f"the golden path's rollout target; the latest is {latest}"
        return False, Reason.UP_TO_DATE, f"runs revision {target} ({note})"
    if strategy == RolloutStrategy.MANUAL:
        direction = "upgrade" if target > applied else "rollback"
        command = kubectl_hint.format(revision=target)
        return (
            True,
            Reason.MANUAL_UPGRADE,
            (f"runs revision {applied}; revision {target} is available ({direction}): `{command}` moves it"),
        )
    return (True, *_moving_message(member, applied, target, step, halt))
