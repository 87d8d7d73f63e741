"""Operator settings from the environment, and the expiry decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from blacktop.api.environment import EnvironmentSpec
from blacktop.config import Settings
from blacktop.controllers.environment import expires_at, is_expired

pytestmark = pytest.mark.unit


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "BLACKTOP_METRICS_PORT": "9999",
            "BLACKTOP_PLATFORM_ADMIN_GROUPS": "a, b",
            "BLACKTOP_TEAM_GROUP_TEMPLATE": "team-{team}",
        }
    )
    assert settings.metrics_port == 9999
    assert settings.platform_admin_groups == ("a", "b")
    assert settings.team_group("payments") == "team-payments"
    assert Settings.from_env({}).namespace == "blacktop-system"


def test_settings_reject_garbage() -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Settings.from_env({"BLACKTOP_METRICS_PORT": "lots"})


def test_expiry() -> None:
    env = {"metadata": {"creationTimestamp": "2026-11-22T10:00:00Z"}}
    spec = EnvironmentSpec.model_validate({"team": "t", "tier": "dev", "ttl": "1h30m"})
    assert expires_at(env, spec) == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    assert not is_expired(env, spec, datetime(2026, 11, 22, 11, 29, 59, tzinfo=UTC))
    assert is_expired(env, spec, datetime(2026, 11, 22, 11, 30, tzinfo=UTC))
    no_ttl = EnvironmentSpec.model_validate({"team": "t", "tier": "dev"})
    assert expires_at(env, no_ttl) is None
    assert not is_expired(env, no_ttl, datetime(2099, 1, 1, tzinfo=UTC))
