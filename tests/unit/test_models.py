"""The API models: wire format, defaults, validation, and the pure value helpers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from blacktop.api.common import Condition, cents_to_money, money_to_cents, parse_duration
from blacktop.api.conditions import ConditionType, get_condition, remove_condition, set_condition
from blacktop.api.environment import EnvironmentSpec, EnvironmentStatus, NetworkIsolation
from blacktop.api.feedback import FeedbackSpec
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import GuardrailPolicySpec
from blacktop.api.scorecard import PlatformScorecardSpec
from blacktop.api.servicerequest import ServiceRequestSpec

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = {
    "Environment": EnvironmentSpec,
    "GoldenPath": GoldenPathSpec,
    "ServiceRequest": ServiceRequestSpec,
    "GuardrailPolicy": GuardrailPolicySpec,
    "Feedback": FeedbackSpec,
    "PlatformScorecard": PlatformScorecardSpec,
}


def test_environment_defaults_and_camel_case() -> None:
    spec = EnvironmentSpec.model_validate(
        {"team": "payments", "tier": "dev", "networkPolicy": {"allowFromNamespaces": ["ci"]}}
    )
    assert spec.quota.cpu == "4"
    assert spec.limits.default_request.memory == "128Mi"
    assert spec.network_policy.isolation is NetworkIsolation.ISOLATED
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert wire["networkPolicy"]["allowFromNamespaces"] == ["ci"]
    assert "network_policy" not in wire


@pytest.mark.parametrize(
    "bad",
    [
        {"team": "payments", "tier": "dev", "bogus": 1},
        {"team": "Payments", "tier": "dev"},
        {"team": "payments", "tier": "qa"},
        {"team": "payments", "tier": "dev", "ttl": "3 days"},
        {"team": "payments", "tier": "dev", "budget": {"monthly": "12.345"}},
        {"team": "payments", "tier": "dev", "quota": {"cpu": "lots"}},
    ],
)
def test_environment_rejects_bad_specs(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EnvironmentSpec.model_validate(bad)


def test_status_ignores_unknown_fields() -> None:
    status = EnvironmentStatus.model_validate({"namespace": "x", "somethingNew": True, "kopf": {}})
    assert status.namespace == "x"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse_into_the_models(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("apiVersion", "").startswith("platform.blacktop.dev/"):
            SPECS[doc["kind"]].model_validate(doc["spec"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72h", timedelta(hours=72)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("15s", timedelta(seconds=15)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1d", "h", "1.5h", "-1h", "30m1h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**11 - 1))
def test_money_round_trips(cents: int) -> None:
    assert money_to_cents(cents_to_money(cents)) == cents


@pytest.mark.parametrize(("text", "cents"), [("0", 0), ("120.5", 12050), ("120.05", 12005), ("7", 700)])
def test_money_to_cents(text: str, cents: int) -> None:
    assert money_to_cents(text) == cents


@given(st.text(max_size=12))
def test_money_to_cents_never_crashes_otherwise(text: str) -> None:
    try:
        cents = money_to_cents(text)
    except ValueError as exc:
        message = str(exc)
        cents = None
    else:
        message = ""
    assert (cents is not None and cents >= 0) or "invalid amount" in message


def _cond(status: str, reason: str, when: str) -> Condition:
    return Condition(type=ConditionType.READY, status=status, reason=reason, message="m", last_transition_time=when)  # type: ignore[arg-type]


def test_set_condition_keeps_transition_time_when_status_unchanged() -> None:
    first = set_condition([], _cond("True", "A", "2026-01-01T00:00:00Z"))
    same = set_condition(first, _cond("True", "B", "2026-01-02T00:00:00Z"))
    assert get_condition(same, "Ready") is not None
    assert get_condition(same, "Ready").last_transition_time == "2026-01-01T00:00:00Z"  # type: ignore[union-attr]
    assert get_condition(same, "Ready").reason == "B"  # type: ignore[union-attr]
    flipped = set_condition(same, _cond("False", "C", "2026-01-03T00:00:00Z"))
    assert get_condition(flipped, "Ready").last_transition_time == "2026-01-03T00:00:00Z"  # type: ignore[union-attr]
    assert remove_condition(flipped, "Ready") == []


def test_ready_condition_sorts_first() -> None:
    conditions = set_condition([], _cond("True", "A", "t").model_copy(update={"type": "Zeta"}))
    conditions = set_condition(conditions, _cond("True", "A", "t"))
    assert [c.type for c in conditions] == ["Ready", "Zeta"]


def test_golden_path_module_pattern_rejects_escapes() -> None:
    with pytest.raises(ValidationError):
        GoldenPathSpec.model_validate({"description": "d", "module": "/etc"})
    assert (
        GoldenPathSpec.model_validate({"description": "d", "module": "postgres-database"}).module == "postgres-database"
    )


def test_guardrail_policy_needs_rules() -> None:
    with pytest.raises(ValidationError):
        GuardrailPolicySpec.model_validate({"mode": "Enforce", "rules": []})
