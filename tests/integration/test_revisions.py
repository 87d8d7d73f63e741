"""GoldenPath revisions through kubectl: folder and git modules (git daemon, smart HTTP with basic auth)
become immutable GoldenPathRevisions when what runs changes, and only then."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitserver import GitRepo, git_daemon, git_http_server
from helpers import (
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    condition,
    get,
    tiny_golden_path,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

TINY = REPO / "terraform-modules" / "tiny"


def revisions_of(kubectl: Kubectl, golden_path: str) -> list[dict[str, Any]]:
    out = kubectl("get", "goldenpathrevisions", "-l", f"platform.blacktop.dev/golden-path={golden_path}", "-o", "json")
    return sorted(json.loads(out.stdout)["items"], key=lambda r: r["spec"]["revision"])


def wait_revision(kubectl: Kubectl, golden_path: str, number: int, timeout: float = 60) -> dict[str, Any]:
    """Wait until the golden path is Ready at revision ``number``; returns that revision."""

    def at() -> dict[str, Any] | None:
        gp = get(kubectl, "goldenpath", golden_path)
        ready = condition(gp) or {}
        if ready.get("status") != "True" or (gp or {}).get("status", {}).get("latestRevision") != number:
            return None
        return next((r for r in revisions_of(kubectl, golden_path) if r["spec"]["revision"] == number), None)

    return wait_for(at, timeout=timeout, what=f"golden path {golden_path} at revision {number}")


def git_golden_path(name: str, url: str, ref: str, **spec: Any) -> dict[str, Any]:
    body = tiny_golden_path(name)
    body["spec"].update({"module": "modules/tiny", "git": {"url": url, "ref": ref}, **spec})
    return body


@pytest.fixture
def cleanup(kubectl: Kubectl) -> Iterator[list[tuple[str, ...]]]:
    doomed: list[tuple[str, ...]] = []
    yield doomed
    for ref in reversed(doomed):
        kubectl("delete", *ref, "--ignore-not-found", "--wait=false")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "git")


def test_schema_changes_make_revisions_and_descriptions_do_not(
    kubectl: Kubectl, operator: OperatorProcess, cleanup: list[tuple[str, ...]]
) -> None:
    name = unique("rev")
    body = tiny_golden_path(name)
    apply_json(kubectl, body)
    cleanup.append(("goldenpath", name))
    first = wait_revision(kubectl, name, 1)
    assert first["metadata"]["name"] == f"{name}-1"
    assert first["spec"]["module"] == "tiny"
    assert "git" not in first["spec"]
    assert first["metadata"]["ownerReferences"][0]["name"] == name

    body["spec"]["description"] = "the same module, described better"
    apply_json(kubectl, body)
    body["spec"]["parameters"]["properties"]["fail"] = {"type": "boolean", "default": False}
    apply_json(kubectl, body)
    second = wait_revision(kubectl, name, 2)
    assert "fail" in second["spec"]["parameters"]["properties"]
    assert [r["spec"]["revision"] for r in revisions_of(kubectl, name)] == [1, 2]
    listing = kubectl("get", "goldenpathrevisions").stdout
    assert f"{name}-2" in listing
    assert "REVISION" in kubectl("get", "goldenpath", name).stdout

    # A revision is a record: the apiserver refuses edits, and tenants may read but not write them.
    refused = kubectl(
        "patch", "goldenpathrevision", f"{name}-1", "--type=merge", "-p", '{"spec":{"module":"other"}}', check=False
    )
    assert refused.returncode != 0
    assert "immutable" in refused.stderr
    as_dev = ("--as=dev-dana", "--as-group=payments", "--as-group=system:authenticated")
    assert kubectl("get", "goldenpathrevision", f"{name}-1", *as_dev).returncode == 0
    forged = dict(first, metadata={"name": unique("forged")})
    denied = kubectl("create", "-f", "-", *as_dev, input=json.dumps(forged), check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


def test_a_folder_module_whose_files_change_gets_a_new_revision(
    kubectl: Kubectl, operator: OperatorProcess, modules_root: Path, cleanup: list[tuple[str, ...]]
) -> None:
    folder = unique("tiny-copy")
    shutil.copytree(TINY, modules_root / folder)
    name = unique("rev-folder")
    body = tiny_golden_path(name)
    body["spec"]["module"] = folder
    apply_json(kubectl, body)
    cleanup.append(("goldenpath", name))
    first = wait_revision(kubectl, name, 1)
    main = modules_root / folder / "main.tf"
    main.write_text(main.read_text() + '\noutput "extra" {\n  value = "new"\n}\n')
    second = wait_revision(kubectl, name, 2, timeout=60)  # seen at the next resync (10 s in tests)
    assert second["spec"]["moduleDigest"] != first["spec"]["moduleDigest"]


def test_a_tag_bump_in_git_becomes_a_revision_at_its_commit(
    kubectl: Kubectl, operator: OperatorProcess, repo: GitRepo, cleanup: list[tuple[str, ...]]
) -> None:
    v1 = repo.commit_module("modules/tiny", TINY, "tiny v1")
    repo.tag("v1.0.0")
    repo.tag("stable")
    with git_daemon(repo) as url:
        name = unique("rev-git")
        apply_json(kubectl, git_golden_path(name, url, "v1.0.0"))
        cleanup.append(("goldenpath", name))
        first = wait_revision(kubectl, name, 1)
        assert first["spec"]["git"] == {"url": url, "ref": "v1.0.0", "commit": v1}
        assert get(kubectl, "goldenpath", name)["status"]["commit"] == v1  # type: ignore[index]

        # Another tag of the same commit: nothing to run differently, so no revision.
        apply_json(kubectl, git_golden_path(name, url, "stable"))
        wait_for(
            lambda: "stable" in ((condition(get(kubectl, "goldenpath", name), "Validated") or {}).get("message") or ""),
            what="the golden path to validate ref stable",
        )
        assert len(revisions_of(kubectl, name)) == 1

        variables = (TINY / "main.tf").read_text().replace('default     = "small"', 'default     = "medium"')
        v2 = repo.commit_module("modules/tiny", {"main.tf": variables}, "tiny v2: medium by default")
        repo.tag("v1.1.0")
        apply_json(kubectl, git_golden_path(name, url, "v1.1.0"))
        second = wait_revision(kubectl, name, 2)
        assert second["spec"]["git"]["commit"] == v2

        # A moved tag is a new commit: seen at the next resync, no spec change needed.
        apply_json(kubectl, git_golden_path(name, url, "stable"))
        third = wait_revision(kubectl, name, 3)
        assert third["spec"]["git"]["commit"] == v1  # back to v1's content: a new number, like helm rollback
        repo.tag("stable", force=True)
        fourth = wait_revision(kubectl, name, 4, timeout=60)
        assert fourth["spec"]["git"]["commit"] == v2

        # A commit with a forbidden construct never becomes a revision.
        bad = (
            (TINY / "main.tf")
            .read_text()
            .replace("  lifecycle {", '  provisioner "local-exec" {\n    command = "id"\n  }\n\n  lifecycle {')
        )
        repo.commit_module("modules/tiny", {"main.tf": bad}, "sneak in local-exec")
        repo.tag("v1.2.0")
        apply_json(kubectl, git_golden_path(name, url, "v1.2.0"))
        refused = wait_for(
            lambda: (c := condition(get(kubectl, "goldenpath", name))) and c["reason"] == "ForbiddenProvisioner" and c,
            what="the golden path to refuse the forbidden commit",
        )
        assert "local-exec" in refused["message"]
        assert len(revisions_of(kubectl, name)) == 4
        apply_json(kubectl, git_golden_path(name, url, "stable"))  # back to the latest good revision
        wait_for(
            lambda: (condition(get(kubectl, "goldenpath", name)) or {}).get("status") == "True",
            what="the golden path to be Ready on revision 4 again",
        )

    # The git server is gone: re-checking says so, and the golden path stays Ready on revision 4.
    validated = wait_for(
        lambda: (c := condition(get(kubectl, "goldenpath", name), "Validated")) and c["status"] == "Unknown" and c,
        timeout=60,
        what="Validated to report the unreachable server",
    )
    assert validated["reason"] == "SourceUnavailable"
    assert "still serving revision 4" in validated["message"]
    gp = get(kubectl, "goldenpath", name)
    assert (condition(gp) or {}).get("status") == "True"
    assert len(revisions_of(kubectl, name)) == 4


def test_a_private_repository_is_read_with_the_credentials_secret(
    kubectl: Kubectl, operator: OperatorProcess, repo: GitRepo, cleanup: list[tuple[str, ...]]
) -> None:
    commit = repo.commit_module("modules/tiny", TINY, "tiny")
    repo.tag("v1")
    password = "private-token-" + unique("t")
    secret = unique("git-creds")
    with git_http_server(repo, "platform-bot", password) as (url, server):
        name = unique("rev-private")
        body = git_golden_path(name, url, "v1")
        body["spec"]["git"]["secretRef"] = {"name": secret, "namespace": "blacktop-system"}
        apply_json(kubectl, body)
        cleanup.append(("goldenpath", name))
        missing = wait_for(
            lambda: (c := condition(get(kubectl, "goldenpath", name))) and c["reason"] == "SourceUnavailable" and c,
            what="the golden path to say its credentials Secret is missing",
        )
        assert f"blacktop-system/{secret} does not exist" in missing["message"]

        wrong = {"username": "platform-bot", "password": "not-the-password"}
        apply_json(kubectl, _secret(secret, wrong))
        cleanup.append(("secret", secret, "-n", "blacktop-system"))
        refused = wait_for(
            lambda: (c := condition(get(kubectl, "goldenpath", name))) and "failed" in c["message"] and c,
            timeout=60,
            what="the golden path to report the refused credentials",
        )
        assert "not-the-password" not in json.dumps(get(kubectl, "goldenpath", name))
        assert server.refused >= 1, refused

        apply_json(kubectl, _secret(secret, {"username": "platform-bot", "password": password}))
        first = wait_revision(kubectl, name, 1, timeout=60)  # picked up at the next resync
        assert first["spec"]["git"]["commit"] == commit
    gp = get(kubectl, "goldenpath", name)
    assert password not in json.dumps(gp)
    assert password not in operator.log_text()


def test_the_revision_history_is_bounded(
    kubectl: Kubectl, operator: OperatorProcess, cleanup: list[tuple[str, ...]]
) -> None:
    name = unique("rev-limit")
    body = tiny_golden_path(name)
    body["spec"]["revisionHistoryLimit"] = 2
    for number, default in enumerate(["small", "medium", "large"], start=1):
        body["spec"]["parameters"]["properties"]["size"]["default"] = default
        apply_json(kubectl, body)
        if number == 1:
            cleanup.append(("goldenpath", name))
        wait_revision(kubectl, name, number)
    wait_for(
        lambda: [r["spec"]["revision"] for r in revisions_of(kubectl, name)] == [2, 3],
        what="the oldest unused revision to be pruned",
    )


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "blacktop-system"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
