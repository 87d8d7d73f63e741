"""Pure pieces of provisioning: parameters, cost, plan summaries, redaction, failure classes, backoff."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blacktop.api.conditions import Reason
from blacktop.api.goldenpath import CostModel, GoldenPathSpec
from blacktop.builders import cost, parameters
from blacktop.builders.retry import backoff
from blacktop.builders.servicerequest import build_connection_secret, connection_secret_name
from blacktop.config import Settings
from blacktop.terraform.errors import classify
from blacktop.terraform.plan import summarise, summarise_stream
from blacktop.terraform.redact import MASK, Redactor, looks_random, redact, tail
from blacktop.terraform.subprocess_runner import command, parse_outputs

pytestmark = pytest.mark.unit

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
        "limits": {"type": "object", "properties": {"connections": {"type": "integer", "default": 10}}, "default": {}},
    },
}


def test_defaults_are_filled_recursively() -> None:
    filled, errors = parameters.validate(SCHEMA, {})
    assert errors == []
    assert filled == {"size": "small", "limits": {"connections": 10}}


def test_errors_name_the_parameter() -> None:
    _, errors = parameters.validate(SCHEMA, {"size": "huge", "extra": 1})
    assert any(e.startswith("parameters.size:") and "huge" in e for e in errors)
    assert any("extra" in e for e in errors)


def test_cost_by_table_then_base() -> None:
    model = CostModel.model_validate({"monthly": "3", "parameter": "size", "table": {"small": "10", "large": "80.50"}})
    assert cost.monthly_cost_cents(model, {"size": "large"}) == 8050
    assert cost.monthly_cost_cents(model, {"size": "unknown"}) == 300
    assert cost.monthly_cost_cents(None, {}) == 0


def test_plan_summary_counts_replacements_as_add_and_destroy() -> None:
    plan = {
        "resource_changes": [
            {"address": "a.x", "type": "a", "change": {"actions": ["create"]}},
            {"address": "b.y", "type": "b", "change": {"actions": ["delete", "create"]}},
            {"address": "c.z", "type": "c", "change": {"actions": ["update"]}},
            {"address": "d.w", "type": "d", "change": {"actions": ["no-op"]}},
        ]
    }
    summary = summarise(plan)
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 1)
    assert summary.resources == ["a.x", "b.y", "c.z"]
    assert summarise({}).empty


def test_redaction_of_known_values_and_patterns() -> None:
    text = 'password = "hunter22" uri postgres://app:s3cr3t@db:5432/x and token abcdEFGH123'
    out = redact(text, ["abcdEFGH123"])
    assert "hunter22" not in out
    assert "s3cr3t" not in out
    assert "abcdEFGH123" not in out
    assert out.count(MASK) == 3
    assert "-----BEGIN" in redact("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")
    assert "MIIE" not in redact("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")


# Redaction, both ways: secrets never survive, ordinary words that happen to be credentials do.
PG_ENV = {
    "PGHOST": "127.0.0.1",
    "PGPORT": "5432",
    "PGUSER": "postgres",
    "PGPASSWORD": "canary-8f3a9c2e71d44b06a5e1",
    "PGSSLMODE": "disable",
}


def test_common_words_that_are_credentials_stay_readable_where_they_are_not_values() -> None:
    redactor = Redactor.of(PG_ENV)
    message = (
        "Error: postgresql_role.app: could not connect to PostgreSQL at 127.0.0.1:5432 "
        "(sslmode disable): connection refused"
    )
    assert redactor(message) == message  # no ***ql_role, no ***:***
    # ... but where they stand as values, they are masked.
    assert redactor("dsn host=127.0.0.1 port=5432 user=postgres") == "dsn host=*** port=*** user=***"
    assert redactor('{"user": "postgres"}') == '{"user": "***"}'


def test_a_short_password_is_masked_as_a_token_but_not_inside_other_words() -> None:
    redactor = Redactor.of({"PGPASSWORD": "hunter22", "PGUSER": "app"})
    assert redactor("postgres://app:hunter22@db:5432/x") == "postgres://app:***@db:5432/x"
    assert redactor("wrong password hunter22.") == "wrong password ***."
    assert redactor("xhunter22y") == "xhunter22y"  # another word, not the value


@given(st.text(max_size=200), st.text(alphabet=st.characters(codec="ascii"), min_size=16, max_size=40))
def test_a_random_looking_secret_never_survives_wherever_it_appears(prefix: str, token: str) -> None:
    secret = "Zq7!" + token  # mixed classes: random enough to be masked everywhere
    if not looks_random(secret):
        return  # e.g. "Zq7!aaaaaaaaaaaaaaaa": too repetitive to be told from text
    for key in ("PGPASSWORD", "WHATEVER"):
        assert secret not in Redactor.of({key: secret})(prefix + secret + prefix)


@given(
    st.text(max_size=60), st.sampled_from(["PGPASSWORD", "API_TOKEN", "secret_key"]), st.text(min_size=1, max_size=12)
)
def test_a_secret_value_never_survives_as_a_whole_token(around: str, key: str, value: str) -> None:
    if not value.strip():
        return
    text = f"{around} {value} {around}"
    out = Redactor.of({key: value})(text)
    assert f" {value} " not in out


def test_tail_drops_box_drawing_and_caps() -> None:
    text = "╷\n│ Error: boom\n│\n│ on main.tf line 3\n╵\n"
    assert tail(text) == "Error: boom\non main.tf line 3"
    assert len(tail("x" * 5000)) == 1500


LOCKED = """
Error: Error acquiring the state lock

Lock Info:
  ID:        6f1c2d3e-aaaa-bbbb-cccc-1234567890ab
  Path:      tfstate-default-x
  Operation: OperationTypeApply
  Who:       root@operator-7d9
"""


@pytest.mark.parametrize(
    ("operation", "stderr", "reason"),
    [
        ("plan", LOCKED, "StateLocked"),
        ("apply", "Error: dial tcp 127.0.0.1:5432: connect: connection refused", "ProviderError"),
        ("plan", "Error: Invalid value for variable\n  on main.tf", "InvalidParameters"),
        ("apply", "Error: something odd", "ApplyFailed"),
        ("destroy", "Error: something odd", "DestroyFailed"),
        ("plan", "Error: Resource postcondition failed", "PlanFailed"),
    ],
)
def test_classification(operation: str, stderr: str, reason: str) -> None:
    assert classify(operation, stderr).reason == reason


def test_lock_details_are_parsed() -> None:
    found = classify("apply", LOCKED)
    assert found.lock_id == "6f1c2d3e-aaaa-bbbb-cccc-1234567890ab"
    assert found.lock_holder == "root@operator-7d9"
    assert classify("apply", "", timed_out=True).reason == "Timeout"


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    settings = Settings()
    base, cap = settings.backoff_base_seconds, settings.backoff_cap_seconds
    assert (base, cap) == (5.0, 300.0)
    delays = [backoff(n, base=base, cap=cap, rng=rng) for n in range(1, 12)]
    assert 2.5 <= delays[0] <= 5
    assert all(d <= cap for d in delays)
    assert delays[-1] >= cap / 2
    assert len({round(backoff(3, base=base, cap=cap), 3) for _ in range(20)}) > 1


def test_python_terraform_commands_are_fixed_for_modern_binaries() -> None:
    destroy = command("tofu", Path("/w"), "destroy", force=True, var_file="v.json")
    assert "-force" not in destroy
    assert "-auto-approve" in destroy
    assert "-input=false" in destroy
    assert "-no-color" in destroy
    plan = command("tofu", Path("/w"), "plan", out="tfplan", lock_timeout="0s")
    assert plan[:2] == ["tofu", "plan"]
    assert "-out=tfplan" in plan
    assert "-lock-timeout=0s" in plan


def test_outputs_json_keeps_sensitivity() -> None:
    stdout = '{"a": {"value": "x", "type": "string", "sensitive": false}, "b": {"value": {"k": 1}, "sensitive": true}}'
    assert parse_outputs(stdout) == {"a": ("x", False), "b": ({"k": 1}, True)}
    assert parse_outputs("") == {}


def test_connection_secret_has_only_the_delivered_outputs() -> None:
    request = {
        "metadata": {"name": "db", "namespace": "team", "uid": "u"},
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "spec": {},
    }
    spec = GoldenPathSpec.model_validate(
        {"description": "d", "module": "m", "outputs": [{"name": "host"}, {"name": "password", "key": "PGPASSWORD"}]}
    )
    secret = build_connection_secret(
        request, "pg", spec, {"host": ("h", False), "password": ("p", True), "internal": ("i", False)}
    )
    assert sorted(secret["data"]) == ["PGPASSWORD", "host"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert connection_secret_name({"metadata": {"name": "x"}, "spec": {"connectionSecretName": "custom"}}) == "custom"


PLAN_STREAM = "\n".join(
    json.dumps(m)
    for m in (
        {"type": "version", "@level": "info", "@message": "OpenTofu 1.10.6"},
        {"type": "planned_change", "change": {"resource": {"addr": "a.x"}, "action": "create"}},
        {"type": "planned_change", "change": {"resource": {"addr": "b.y"}, "action": "replace"}},
        {"type": "planned_change", "change": {"resource": {"addr": "c.z"}, "action": "update"}},
        {"type": "change_summary", "changes": {"add": 2, "change": 1, "remove": 1}},
    )
)


def test_the_plan_stream_gives_the_same_summary_as_the_shown_plan() -> None:
    summary, words = summarise_stream(PLAN_STREAM)
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 1)
    assert summary.resources == ["a.x", "b.y", "c.z"]
    assert words == ""


def test_the_plan_streams_diagnostics_read_as_the_tool_would_print_them() -> None:
    failed = json.dumps(
        {
            "@level": "error",
            "type": "diagnostic",
            "diagnostic": {"severity": "error", "summary": "Resource postcondition failed", "detail": "boom"},
        }
    )
    _, words = summarise_stream(failed)
    assert words == "Error: Resource postcondition failed\nboom"
    assert classify("plan", words).reason == Reason.PLAN_FAILED
