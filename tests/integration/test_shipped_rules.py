"""The shipped Prometheus rules pass `promtool check rules` and their unit tests (`promtool test rules`)."""

from __future__ import annotations

import subprocess

import pytest

from blacktop.toolbox import find_tool
from helpers import REPO

pytestmark = pytest.mark.integration

RULES = REPO / "charts" / "blacktop" / "files" / "prometheus-rules.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool("promtool")), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("test_file", sorted((REPO / "tests" / "rules").glob("*.yaml")), ids=lambda p: p.name)
def test_rule_unit_tests(test_file: object) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
