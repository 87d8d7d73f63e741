"""Rollout and revision deciders: unit examples and properties over random fleets of requests."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blacktop.api.goldenpath import (
    GitSource,
    GoldenPathSpec,
    OutputMapping,
    RolloutHalt,
    RolloutPhase,
    RolloutStrategy,
)
from blacktop.builders import revisions
from blacktop.builders.rollout import (
    TIER_ORDER,
    Member,
    halt_still_holds,
    next_step,
    revision_for,
    upgrade_condition,
)

pytestmark = pytest.mark.unit

AUTO, MANUAL = RolloutStrategy.AUTOMATIC, RolloutStrategy.MANUAL
HINT = 'kubectl patch servicerequest x --type merge -p \'{{"spec":{{"revision":{revision}}}}}\''


def member(key: str, tier: str | None, revision: int | None, **kw: object) -> Member:
    return Member(key=key, tier=tier, revision=revision, provisioned=revision is not None, ready=True, **kw)  # type: ignore[arg-type]


members_st = st.lists(
    st.builds(
        Member,
        key=st.text("abcdef", min_size=1, max_size=4).map(lambda s: f"ns/{s}"),
        tier=st.sampled_from([*TIER_ORDER, None]),
        revision=st.one_of(st.none(), st.integers(1, 4)),
        pinned=st.one_of(st.none(), st.integers(1, 4)),
        provisioned=st.booleans(),
        ready=st.booleans(),
        generation=st.integers(1, 3),
    ),
    max_size=12,
    unique_by=lambda m: m.key,
)


@given(members=members_st, target=st.integers(1, 4), batch=st.integers(1, 5))
def test_a_batch_is_small_one_tier_never_pinned_and_never_ahead_of_an_earlier_tier(
    members: list[Member], target: int, batch: int
) -> None:
    step = next_step(members, target, AUTO, batch)
    by_key = {m.key: m for m in members}
    chosen = [by_key[k] for k in step.batch]
    assert len(chosen) <= batch
    assert all(m.pinned is None and m.provisioned and m.revision != target for m in chosen)
    assert len({m.rank for m in chosen}) <= 1
    if chosen:
        rank = chosen[0].rank
        assert TIER_ORDER[rank] == step.tier
        earlier = [m for m in members if m.follows and m.rank < rank]
        assert all(m.revision == target and m.ready for m in earlier)


@given(members=members_st, target=st.integers(1, 4), batch=st.integers(1, 5))
def test_halted_and_manual_rollouts_move_nothing(members: list[Member], target: int, batch: int) -> None:
    assert next_step(members, target, AUTO, batch, halted=True).batch == ()
    assert next_step(members, target, MANUAL, batch).batch == ()


@settings(max_examples=200)
@given(members=members_st, target=st.integers(1, 4), batch=st.integers(1, 5))
def test_a_rollout_completes_tier_by_tier_and_leaves_pinned_requests_alone(
    members: list[Member], target: int, batch: int
) -> None:
    # Every moved request becomes Ready (a healthy fleet): the rollout must finish, in tier order.
    fleet = {m.key: dataclasses.replace(m, ready=True) for m in members}
    moved_ranks: list[int] = []
    for _ in range(len(fleet) + 1):
        step = next_step(list(fleet.values()), target, AUTO, batch)
        if not step.batch:
            break
        for key in step.batch:
            moved_ranks.append(fleet[key].rank)
            fleet[key] = dataclasses.replace(fleet[key], revision=target)
    assert step.phase == RolloutPhase.COMPLETE
    assert moved_ranks == sorted(moved_ranks)
    for before in members:
        after = fleet[before.key]
        assert after.revision == (target if before.follows else before.revision)


def test_the_next_tier_waits_until_moved_requests_are_ready() -> None:
    fleet = [
        dataclasses.replace(member("dev/a", "dev", 2), ready=False),
        member("stg/b", "staging", 1),
    ]
    step = next_step(fleet, 2, AUTO, 1)
    assert step.batch == ()
    assert step.waiting_for == ("dev/a",)
    assert step.phase == RolloutPhase.PROGRESSING


def test_progress_counts_followers_per_tier() -> None:
    fleet = [
        member("d/a", "dev", 2),
        member("d/b", "dev", 1),
        member("s/c", "staging", 1),
        member("p/d", "prod", 1, pinned=1),
        member("x/e", None, 1),  # environment gone: counted with prod
    ]
    step = next_step(fleet, 2, AUTO, 5)
    assert step.batch == ("d/b",)
    assert step.progress == "dev 1/2, staging 0/1, prod 0/1"
    assert step.pinned == 1


def test_revision_for_prefers_the_pin_then_what_runs_then_the_target() -> None:
    assert revision_for(pinned=3, applied=1, target=5) == 3
    assert revision_for(pinned=None, applied=1, target=5) == 1
    assert revision_for(pinned=None, applied=None, target=5) == 5


def test_a_halt_holds_until_the_request_or_the_target_changes() -> None:
    halt = RolloutHalt(
        request="s/b", revision=2, tier="staging", reason="PlanFailed", message="x", generation=1, time="t"
    )
    fleet = [member("s/b", "staging", 1)]
    assert halt_still_holds(halt, 2, fleet)
    assert not halt_still_holds(halt, 3, fleet)  # a new target: a new rollout
    assert not halt_still_holds(halt, 2, [dataclasses.replace(fleet[0], generation=2)])  # the owner changed it
    assert not halt_still_holds(halt, 2, [])  # it is gone
    assert not halt_still_holds(None, 2, fleet)


def test_upgrade_available_says_what_is_due_and_how_to_move() -> None:
    step = next_step([member("s/b", "staging", 1)], 2, AUTO, 1)
    pending = upgrade_condition(
        member("p/a", "prod", 1), latest=2, target=2, strategy=AUTO, step=step, halt=None, kubectl_hint=HINT
    )
    assert pending[:2] == (True, "RolloutPending")
    manual = upgrade_condition(
        member("p/a", "prod", 1), latest=2, target=2, strategy=MANUAL, step=step, halt=None, kubectl_hint=HINT
    )
    assert manual[:2] == (True, "ManualUpgrade")
    assert '{"spec":{"revision":2}}' in manual[2]
    pinned = upgrade_condition(
        member("p/a", "prod", 1, pinned=1), latest=2, target=2, strategy=AUTO, step=step, halt=None, kubectl_hint=HINT
    )
    assert pinned[:2] == (True, "Pinned")
    current = upgrade_condition(
        member("p/a", "prod", 2), latest=2, target=2, strategy=AUTO, step=step, halt=None, kubectl_hint=HINT
    )
    assert current == (False, "UpToDate", "runs revision 2 (the latest)")
    halt = RolloutHalt(
        request="s/b", revision=2, tier="staging", reason="PlanFailed", message="boom", generation=1, time="t"
    )
    halted = next_step([member("s/b", "staging", 1)], 2, AUTO, 1, halted=True)
    text = upgrade_condition(
        member("p/a", "prod", 1), latest=2, target=2, strategy=AUTO, step=halted, halt=halt, kubectl_hint=HINT
    )
    assert text[:2] == (True, "RolloutHalted")
    assert "s/b (staging) PlanFailed: boom" in text[2]


# -- revisions ----------------------------------------------------------------------------------------

DIGEST = "a" * 64


def spec(**kw: object) -> GoldenPathSpec:
    base: dict[str, object] = {"description": "d", "module": "svc"}
    return GoldenPathSpec.model_validate({**base, **kw})


def test_a_revision_is_identified_by_what_runs_not_by_the_refs_name() -> None:
    git = {"url": "https://git.example.com/m.git", "ref": "v1"}
    one = revisions.revision_spec("gp", 1, spec(git=git), DIGEST, "1" * 40)
    alias = revisions.revision_spec("gp", 2, spec(git={**git, "ref": "stable"}), DIGEST, "1" * 40)
    moved = revisions.revision_spec("gp", 2, spec(git=git), DIGEST, "2" * 40)
    schema = revisions.revision_spec(
        "gp", 2, spec(git=git, parameters={"type": "object", "required": ["a"]}), DIGEST, "1" * 40
    )
    outputs = revisions.revision_spec("gp", 2, spec(git=git, outputs=[{"name": "url"}]), DIGEST, "1" * 40)
    described = spec(git=git, description="other words", cost={"monthly": "5"})
    operational = revisions.revision_spec("gp", 2, described, DIGEST, "1" * 40)
    assert one.digest == alias.digest == operational.digest
    assert len({one.digest, moved.digest, schema.digest, outputs.digest}) == 4
    folder = revisions.revision_spec("gp", 1, spec(), DIGEST, None)
    assert folder.git is None
    assert folder.digest != revisions.revision_spec("gp", 1, spec(), "b" * 64, None).digest


def test_spec_at_runs_the_revisions_commit_schema_and_outputs_with_todays_credentials() -> None:
    old = revisions.revision_spec(
        "gp", 1, spec(git={"url": "https://g/m.git", "ref": "v1"}, outputs=[{"name": "a"}]), DIGEST, "1" * 40
    )
    now = spec(
        git={"url": "https://g/m.git", "ref": "v2", "secretRef": {"name": "git", "namespace": "ops"}},
        outputs=[{"name": "b"}],
        parameters={"type": "object", "properties": {"new": {"type": "string"}}},
    )
    effective = revisions.spec_at(now, old)
    assert effective.git == GitSource(url="https://g/m.git", ref="1" * 40, secret_ref=now.git.secret_ref)  # type: ignore[union-attr]
    assert effective.outputs == [OutputMapping(name="a")]
    assert effective.parameters == {"type": "object"}


def test_names_stay_valid_and_pruning_keeps_the_newest_and_what_is_in_use() -> None:
    assert revisions.revision_name("tiny", 3) == "tiny-3"
    long = revisions.revision_name("a" * 253, 12)
    assert len(long) <= 253
    assert long.endswith("-12")
    assert long != revisions.revision_name("a" * 252 + "b", 12)
    assert revisions.to_prune(list(range(1, 13)), keep={2}, limit=10) == [1]
    assert revisions.to_prune([1, 2, 3], keep=set(), limit=10) == []
