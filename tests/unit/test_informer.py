"""The informer cache's copy of a ServiceRequest holds everything the periodic looks read (a
rollout's members, the scorecard's facts, a budget's price) exactly as the whole object gives it,
and leaves out the bulk none of them reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from blacktop.controllers.rollout import member_of
from blacktop.kube.informer import request_projection
from blacktop.metrics.facts import EnvironmentFacts, request_facts

pytestmark = pytest.mark.unit


def whole_request() -> dict[str, Any]:
    condition = {"lastTransitionTime": "2026-12-01T10:00:05Z", "observedGeneration": 2}
    return {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "metadata": {
            "name": "orders-db",
            "namespace": "payments-dev",
            "uid": "u-1",
            "generation": 2,
            "resourceVersion": "812",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 2000},
            "managedFields": [
                {"manager": "kubectl", "operation": "Update", "time": "2026-12-01T10:00:00Z", "fieldsV1": {"f:spec": {"f:goldenPath": {}}}},
                {"manager": "argocd", "operation": "Apply", "time": "2026-12-01T11:00:00Z", "fieldsV1": {"f:spec": {"f:parameters": {}}}},
                {"manager": "blacktop", "operation": "Update", "subresource": "status", "time": "2026-12-01T11:00:09Z", "fieldsV1": {"f:status": {"f:conditions": {}}}},
            ],
        },
        "spec": {"goldenPath": "postgres-database", "parameters": {"size": "small"}, "revision": 3},
        "status": {
            "observedGeneration": 2,
            "revision": 3,
            "firstReadyTime": "2026-12-01T10:00:05Z",
            "monthlyCost": "12.50",
            "stage": "Ready",
            "outputs": ["uri", "password"],
            "plan": {"add": 1, "change": 0, "destroy": 0, "resources": ["postgresql_database.db"] * 50},
            "history": {"generation": 2, "changedAt": "2026-12-01T11:00:00Z", "changes": [], "episodes": []},
            "conditions": [
                {**condition, "type": "Ready", "status": "True", "reason": "Provisioned", "message": "ready"},
                {**condition, "type": "UpgradeAvailable", "status": "False", "reason": "UpToDate", "message": "at 3"},
                {**condition, "type": "Planned", "status": "True", "reason": "Reconciled", "message": "plan: 1 to add"},
            ],
        },
    }  # fmt: skip


def test_a_requests_copy_gives_the_rollout_and_the_scorecard_what_the_whole_object_gives() -> None:
    whole = whole_request()
    copy = request_projection(whole)
    assert member_of(copy, "dev") == member_of(whole, "dev")
    created = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    facts = EnvironmentFacts("payments-dev", "e-1", "payments", "dev", created, deleted_at=None, last_change=created)
    envs = {"payments-dev": facts}
    assert request_facts(copy, envs) == request_facts(
        whole, envs
    )  # spec written at 11:00 (argocd), not the status write
    assert copy["status"]["monthlyCost"] == "12.50"
    assert [c["type"] for c in copy["status"]["conditions"]] == ["Ready", "UpgradeAvailable"]
    # The bulk nobody periodic reads stays out: a fraction of the size.
    assert {"outputs", "plan", "stage"}.isdisjoint(copy["status"])
    assert "annotations" not in copy["metadata"]
    assert len(json.dumps(copy)) < len(json.dumps(whole)) / 3


def test_a_request_without_status_is_copied_without_one() -> None:
    whole = whole_request()
    del whole["status"]
    assert "status" not in request_projection(whole)
