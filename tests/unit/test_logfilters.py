"""Kopf's log lines re-levelled: routine successes to DEBUG, guardrail denials to INFO, the rest untouched."""

from __future__ import annotations

import logging

import pytest

from blacktop.handlers.logfilters import KopfLines

pytestmark = pytest.mark.unit


def passes(message: str, level: int, logger_level: int = logging.INFO) -> tuple[bool, int]:
    logging.getLogger("blacktop-test-kopf").setLevel(logger_level)
    record = logging.LogRecord("blacktop-test-kopf", level, __file__, 1, message, None, None)
    return KopfLines().filter(record), record.levelno


def test_waiting_for_inputs_or_dependents_is_info_not_error() -> None:
    for message in (
        "Handler 'service_request_changed' failed temporarily: WaitingForInputs: waiting for input(s) from db",
        "Handler 'service_request_deleted' failed temporarily: WaitingForDependents: deleting: waiting for api",
    ):
        assert passes(message, logging.ERROR) == (True, logging.INFO)
    failed = "Handler 'service_request_changed' failed temporarily: ApplyFailed: apply failed"
    assert passes(failed, logging.ERROR) == (True, logging.ERROR)


@pytest.mark.parametrize(
    "message",
    [
        "Handler 'metrics-servicerequests' succeeded.",
        "Handler 'portal-guardrailpolicies' succeeded.",
        "Handler 'environment-child-namespaces' succeeded.",
        "Timer 'environment_resync' succeeded.",
        "Handler 'drift-schedule' succeeded.",
        "Webhook 'validate-environment' succeeded.",
        "Handler 'notifications-servicerequests' succeeded.",
        "Timer 'service_request_inputs' succeeded.",
    ],
)
def test_routine_successes_drop_to_debug(message: str) -> None:
    assert passes(message, logging.INFO) == (False, logging.DEBUG)
    assert passes(message, logging.INFO, logger_level=logging.DEBUG) == (True, logging.DEBUG)  # --verbose


def test_a_denial_is_info_not_error() -> None:
    message = "Webhook 'validate-servicerequest' failed permanently: denied by GuardrailPolicy p/r: over budget"
    assert passes(message, logging.ERROR) == (True, logging.INFO)


@pytest.mark.parametrize(
    ("message", "level"),
    [
        ("Handler 'service_request_changed' succeeded.", logging.INFO),  # a real change: stays
        ("Handler 'environment_deleted' failed permanently: boom", logging.ERROR),
        ("Timer 'environment_resync' failed with an exception. Will retry.", logging.ERROR),
        ("Handler 'metrics-environments' failed temporarily: later", logging.WARNING),
        ("Something else entirely.", logging.INFO),
    ],
)
def test_everything_else_is_untouched(message: str, level: int) -> None:
    assert passes(message, level) == (True, level)
