"""Rollouts through kubectl, over real requests: a tag bump in a git repository served on loopback becomes a
new revision, rolls out dev first, a request whose upgrade plan fails in staging halts it before prod,
a pinned request never moves, a fixed request lets it finish, and a rollback walks the same way back.
Manual rollouts move a request when its owner asks, and only its owner may."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitserver import GitRepo, git_daemon
from helpers import (
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    condition,
    get,
    make_environment,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.integration

TINY = (REPO / "terraform-modules" / "tiny" / "main.tf").read_text()
# Version 2 of the module no longer offers size large: planning a large request fails.
TINY_V2 = TINY.replace(
    "  lifecycle {\n",
    "  lifecycle {\n"
    "    precondition {\n"
    '      condition     = var.size != "large"\n'
    '      error_message = "version 2 no longer offers size large; use medium."\n'
    "    }\n",
    1,
)


def golden_path(name: str, url: str, ref: str, strategy: str) -> dict[str, Any]:
    body = tiny_golden_path(name)
    body["spec"].update(
        {
            "module": "modules/tiny",
            "git": {"url": url, "ref": ref},
            "tiers": ["dev", "staging", "prod"],
            "rollout": {"strategy": strategy, "batchSize": 1},
        }
    )
    return body


def first_golden_path(
    kubectl: Kubectl, cleanup: list[tuple[str, ...]], prefix: str, url: str, ref: str, strategy: str
) -> str:
    """Apply a new git golden path at ``ref``, cleaned up after the test; wait until it is Ready."""
    golden = unique(prefix)
    apply_json(kubectl, golden_path(golden, url, ref, strategy))
    cleanup.append(("goldenpath", golden))
    kubectl("wait", "--for=condition=Ready", f"goldenpath/{golden}", "--timeout=60s")
    return golden


def revision_of(kubectl: Kubectl, name: str, namespace: str) -> int | None:
    sr = get(kubectl, "servicerequest", name, "-n", namespace)
    value = ((sr or {}).get("status") or {}).get("revision")
    return int(value) if value is not None else None


def rollout_of(kubectl: Kubectl, golden: str) -> dict[str, Any]:
    return ((get(kubectl, "goldenpath", golden) or {}).get("status") or {}).get("rollout") or {}


def wait_rollout(kubectl: Kubectl, golden: str, phase: str, revision: int, what: str) -> dict[str, Any]:
    """Wait until the golden path's rollout of ``revision`` is in ``phase``; returns the rollout status."""
    return wait_for(
        lambda: (r := rollout_of(kubectl, golden)).get("phase") == phase and r.get("revision") == revision and r,
        timeout=240,
        what=what,
    )


def show(kubectl: Kubectl, golden: str) -> str:
    """What a platform engineer watching the rollout sees (printed: `pytest -s` shows it)."""
    text = "\n".join(
        [
            "$ kubectl get goldenpath -o wide",
            kubectl("get", "goldenpath", golden, "-o", "wide").stdout.rstrip(),
            f"$ kubectl get goldenpathrevisions --field-selector spec.goldenPath={golden}",
            kubectl("get", "goldenpathrevisions", f"--field-selector=spec.goldenPath={golden}").stdout.rstrip(),
            f"$ kubectl get servicerequests -A --field-selector spec.goldenPath={golden}",
            kubectl("get", "servicerequests", "-A", f"--field-selector=spec.goldenPath={golden}").stdout.rstrip(),
        ]
    )
    print(text)
    return text


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "git")


@pytest.fixture
def cleanup(kubectl: Kubectl) -> Iterator[list[tuple[str, ...]]]:
    doomed: list[tuple[str, ...]] = []
    yield doomed
    for ref in reversed(doomed):
        kubectl("delete", *ref, "--ignore-not-found", "--wait=false")


def test_automatic_rollout_dev_first_halted_in_staging_then_finished_and_rolled_back(
    kubectl: Kubectl, operator: OperatorProcess, repo: GitRepo, cleanup: list[tuple[str, ...]]
) -> None:
    repo.commit_module("modules/tiny", {"main.tf": TINY}, "tiny v1")
    repo.tag("v1.0.0")
    v2 = repo.commit_module("modules/tiny", {"main.tf": TINY_V2}, "tiny v2: no more large")
    repo.tag("v2.0.0")
    team = unique("shop")
    envs = {tier: make_environment(kubectl, f"{team}-{tier}", team, tier) for tier in ("dev", "staging", "prod")}
    for env in envs.values():
        cleanup.append(("environment", env))
    with git_daemon(repo) as url:
        golden = first_golden_path(kubectl, cleanup, "tiny-git", url, "v1.0.0", "Automatic")
        requests = {
            "api": ("dev", {}),
            "web": ("dev", {}),
            "cart": ("staging", {}),
            "search": ("staging", {"size": "large"}),  # its upgrade plan will fail
            "orders": ("prod", {}),
            "ledger": ("prod", {}),
        }
        for name, (tier, params) in requests.items():
            body = service_request(name, envs[tier], golden, **params)
            if name == "ledger":
                body["spec"]["revision"] = 1  # pinned: never moved
            apply_json(kubectl, body)
        for name, (tier, _) in requests.items():
            wait_ready(kubectl, name, envs[tier])
            assert revision_of(kubectl, name, envs[tier]) == 1
        wait_rollout(kubectl, golden, "Complete", 1, "revision 1 to be complete")

        # Publish version 2: a tag bump in the repository, named by the golden path.
        apply_json(kubectl, golden_path(golden, url, "v2.0.0", "Automatic"))
        halted = wait_rollout(kubectl, golden, "Halted", 2, "the rollout of revision 2 to halt in staging")
        print("\n--- halted in staging ---")
        show(kubectl, golden)
        assert halted["halted"]["request"] == f"{envs['staging']}/search"
        assert halted["halted"]["tier"] == "staging"
        assert halted["halted"]["reason"] == "PlanFailed"
        assert "no longer offers" not in json.dumps(halted)  # the details stay with the request's team
        assert revision_of(kubectl, "api", envs["dev"]) == 2
        assert revision_of(kubectl, "web", envs["dev"]) == 2
        assert revision_of(kubectl, "search", envs["staging"]) == 1
        assert revision_of(kubectl, "orders", envs["prod"]) == 1
        assert revision_of(kubectl, "ledger", envs["prod"]) == 1
        search = get(kubectl, "servicerequest", "search", "-n", envs["staging"])
        upgrade = condition(search, "UpgradeAvailable") or {}
        assert upgrade.get("reason") == "RolloutHalted"
        assert "no longer offers size large" in upgrade["message"]
        assert (condition(search) or {}).get("status") == "True"  # still Ready on revision 1
        orders = wait_for(
            lambda: (
                (c := condition(get(kubectl, "servicerequest", "orders", "-n", envs["prod"]), "UpgradeAvailable"))
                and c["reason"] == "RolloutHalted"
                and c
            ),
            what="prod to be told the rollout is halted",
        )
        assert "no longer offers" not in orders["message"]
        assert (condition(get(kubectl, "goldenpath", golden), "RolledOut") or {}).get("reason") == "RolloutHalted"
        commit = get(kubectl, "goldenpath", golden)["status"]["commit"]  # type: ignore[index]
        assert commit == v2

        # The owner fixes the request: the halt lifts, staging and then prod move; the pin stays.
        kubectl("patch", "servicerequest", "search", "-n", envs["staging"], "--type=merge", "-p",
                '{"spec":{"parameters":{"size":"medium"}}}')  # fmt: skip
        wait_rollout(kubectl, golden, "Complete", 2, "the rollout of revision 2 to complete")
        print("\n--- complete ---")
        show(kubectl, golden)
        for name, (tier, _) in requests.items():
            assert revision_of(kubectl, name, envs[tier]) == (1 if name == "ledger" else 2), name
        ledger = condition(get(kubectl, "servicerequest", "ledger", "-n", envs["prod"]), "UpgradeAvailable") or {}
        assert ledger.get("reason") == "Pinned"
        assert '{"spec":{"revision":2}}' in ledger["message"]

        # Rollback: the same walk to revision 1, dev first.
        kubectl("patch", "goldenpath", golden, "--type=merge", "-p", '{"spec":{"rollout":{"revision":1}}}')
        wait_rollout(kubectl, golden, "Complete", 1, "the rollback to revision 1 to complete")
        print("\n--- rolled back ---")
        show(kubectl, golden)
        for name, (tier, _) in requests.items():
            assert revision_of(kubectl, name, envs[tier]) == 1, name
        for name, (tier, _) in requests.items():
            kubectl("delete", "servicerequest", name, "-n", envs[tier], "--wait=false")


def test_manual_rollout_moves_a_request_when_its_owner_asks_and_only_its_owner(
    kubectl: Kubectl, operator: OperatorProcess, repo: GitRepo, cleanup: list[tuple[str, ...]]
) -> None:
    repo.commit_module("modules/tiny", {"main.tf": TINY}, "tiny v1")
    repo.tag("v1")
    repo.commit_module("modules/tiny", {"main.tf": TINY_V2}, "tiny v2")
    repo.tag("v2")
    team, other = unique("books"), unique("games")
    env = make_environment(kubectl, f"{team}-dev", team)
    cleanup.append(("environment", env))
    with git_daemon(repo) as url:
        golden = first_golden_path(kubectl, cleanup, "tiny-manual", url, "v1", "Manual")
        apply_json(kubectl, service_request("catalog", env, golden))
        wait_ready(kubectl, "catalog", env)
        apply_json(kubectl, golden_path(golden, url, "v2", "Manual"))
        upgrade = wait_for(
            lambda: (
                (c := condition(get(kubectl, "servicerequest", "catalog", "-n", env), "UpgradeAvailable"))
                and c["status"] == "True"
                and c
            ),
            timeout=60,
            what="UpgradeAvailable on the request",
        )
        assert upgrade["reason"] == "ManualUpgrade"
        assert f"kubectl patch servicerequest catalog -n {env}" in upgrade["message"]
        assert revision_of(kubectl, "catalog", env) == 1  # nothing moves by itself
        assert rollout_of(kubectl, golden)["phase"] == "WaitingForOwners"

        move = ("patch", "servicerequest", "catalog", "-n", env, "--type=merge", "-p", '{"spec":{"revision":2}}')
        intruder = kubectl(*move, f"--as={other}-dev", f"--as-group={other}", check=False)
        assert intruder.returncode != 0
        assert "forbidden" in intruder.stderr
        kubectl(*move, f"--as={team}-dev", f"--as-group={team}")  # the one step its owner takes
        wait_for(lambda: revision_of(kubectl, "catalog", env) == 2, timeout=120, what="the request at revision 2")
        wait_for(
            lambda: (
                (condition(get(kubectl, "servicerequest", "catalog", "-n", env), "UpgradeAvailable") or {}).get(
                    "status"
                )
                == "False"
            ),
            what="UpgradeAvailable to turn False",
        )
        header, row = kubectl("get", "servicerequests", "-n", env).stdout.splitlines()[:2]
        assert row.split()[header.split().index("REVISION")] == "2"
        kubectl("delete", "servicerequest", "catalog", "-n", env, "--wait=false")
