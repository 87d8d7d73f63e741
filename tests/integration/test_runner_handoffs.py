"""The two hand-offs a runner must get right, with the real tools: the plan applied is the plan shown
(real OpenTofu), and a runner pod writes the state only while its run holds the lock, with exactly
the rights its Role grants (the real apiserver, the run's own ServiceAccount token)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from blacktop.api.conditions import Reason
from blacktop.runners import pods
from blacktop.runners.agent import Agent, Api, Config
from blacktop.terraform import workspace
from blacktop.terraform.runner import RunIdentity, RunTarget
from blacktop.terraform.state import LockInfo, new_lease, state_of
from blacktop.terraform.subprocess_runner import SubprocessRunner
from blacktop.toolbox import cache_dir, find_tool
from helpers import REPO, Kubectl, apply_json, get, unique

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def no_slot(stage: str) -> AsyncIterator[None]:
    yield


def tiny_runner(tmp_path: Path) -> SubprocessRunner:
    workdir = workspace.prepare(
        tmp_path, "ws", REPO / "terraform-modules" / "tiny", {"name": "db", "size": "small"}, workspace.LocalBackend()
    )
    env = workspace.environment(cache_dir() / "tofu.tfrc", {})
    return SubprocessRunner(str(find_tool("tofu")), workdir, env, timeout=300, grace=5, slot=no_slot)


def test_the_saved_plan_applied_is_the_one_shown(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = tiny_runner(tmp_path)
        plan_file = runner.workdir / workspace.PLAN_FILE
        assert (await runner.init()).ok
        assert (await runner.plan()).changes
        small = await runner.show_plan()
        assert small.ok
        assert len(small.digest) == 64
        judged = plan_file.read_bytes()
        # Another plan takes the file's place (here: other variables) after the first was shown.
        (runner.workdir / workspace.VAR_FILE).write_text(json.dumps({"name": "db", "size": "large"}))
        assert (await runner.plan()).changes
        large = await runner.show_plan()
        assert large.digest != small.digest
        swapped = plan_file.read_bytes()
        plan_file.write_bytes(judged)  # the file is not the one last shown any more
        refused = await runner.apply_plan()
        assert not refused.ok
        assert refused.reason == Reason.APPLY_FAILED
        assert "not the plan that was shown and judged" in refused.detail
        # The digest a caller was shown is checked the same way (the runner pod gets it with `apply`).
        plan_file.write_bytes(swapped)
        refused = await runner.apply_plan(digest=small.digest)
        assert not refused.ok
        assert "not the plan that was shown" in refused.detail
        assert not (runner.workdir / workspace.STATE_FILE).exists()  # nothing was applied
        assert (await runner.apply_plan()).ok  # the plan shown last, unchanged: applied
        outputs = await runner.outputs()
        assert outputs.values["endpoint"] == ("tiny://db.large.svc:8080", False)

    asyncio.run(scenario())


def _server_and_ca(kubeconfig: Path, tmp_path: Path) -> tuple[str, Path]:
    cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
    ca = tmp_path / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        shutil.copy(cluster["certificate-authority"], ca)
    return cluster["server"], ca


def _state(kubectl: Kubectl, name: str, namespace: str) -> dict[str, object] | None:
    secret = get(kubectl, "secret", name, "-n", namespace)
    raw = ((secret or {}).get("data") or {}).get("tfstate")
    return json.loads(gzip.decompress(base64.b64decode(raw))) if raw else None


def test_a_runner_writes_the_state_only_under_its_runs_lock(kubectl: Kubectl, installed: Path, tmp_path: Path) -> None:
    namespace = "blacktop-system"
    uid = unique("uid")  # a request's uid as far as names go
    state = state_of(namespace, uid)
    run = RunIdentity(id=unique("r").replace("-", ""), lock_id="lock-of-this-run", operation="apply")
    target = RunTarget(
        name="t", module=tmp_path, root=tmp_path, variables={}, credentials={}, state=state, request="ns/name"
    )
    name = pods.run_name(run)
    # The run's account and Role exactly as pod mode creates them, and its token from the TokenRequest API.
    apply_json(kubectl, pods.service_account(target, run))
    account = get(kubectl, "serviceaccount", name, "-n", namespace)
    assert account is not None
    for obj in (pods.role(target, run, account), pods.role_binding(target, run, account)):
        apply_json(kubectl, obj)
    token = tmp_path / "token"
    token.write_text(kubectl("create", "token", name, "-n", namespace, "--duration=10m").stdout.strip())
    server, ca = _server_and_ca(kubectl.kubeconfig, tmp_path)
    api = Api(server, token, ca)
    empty = {"version": 4, "serial": 0, "lineage": "l1", "resources": []}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": state.state_secret, "namespace": namespace, "annotations": {"encoding": "gzip"}},
        "data": {"tfstate": base64.b64encode(gzip.compress(json.dumps(empty).encode())).decode()},
    }
    try:
        apply_json(kubectl, secret)
        someone = LockInfo(id="someone-else", operation="OperationTypeApply", who="x", info="", created="")
        apply_json(kubectl, new_lease(state, someone))
        config = Config(namespace, name, state.state_secret, state.lock_lease, run.lock_id, 60, 5, (), "tofu")
        work = tmp_path / "work"
        agent = Agent(config, api, work=work, inputs=tmp_path, environ={})
        agent.workdir.mkdir(parents=True)

        async def scenario() -> list[tuple[bool, str]]:
            await agent._load_state()
            assert json.loads((agent.workdir / workspace.STATE_FILE).read_text())["lineage"] == "l1"
            written = {**empty, "serial": 1, "resources": [{"mode": "managed", "type": "terraform_data", "name": "s"}]}
            (agent.workdir / workspace.STATE_FILE).write_text(json.dumps(written))
            refused = await agent._save_state()  # the lock is someone else's: nothing written
            mine = LockInfo(id=run.lock_id, operation="OperationTypeApply", who="blacktop", info="", created="")
            apply_json(kubectl, new_lease(state, mine))
            saved = await agent._save_state()
            return [refused, saved]

        (refused, why), (saved, _) = asyncio.run(scenario())
        assert not refused
        assert "no longer this run's" in why
        assert saved
        found = _state(kubectl, state.state_secret, namespace)
        assert found is not None
        assert found["serial"] == 1
        # That account: nothing beyond its two Secrets and its Lease.
        who = f"--as=system:serviceaccount:{namespace}:{name}"
        for args in (["list", "secrets"], ["get", "secret/other"], ["update", f"lease/{state.lock_lease}"]):
            assert kubectl("auth", "can-i", *args, "-n", namespace, who, check=False).stdout.strip() == "no"
        assert (
            kubectl("auth", "can-i", "patch", f"secret/{state.state_secret}", "-n", namespace, who).stdout.strip()
            == "yes"
        )
    finally:
        kubectl("delete", "serviceaccount,role,rolebinding", name, "-n", namespace, "--ignore-not-found")
        kubectl("delete", "secret", state.state_secret, "-n", namespace, "--ignore-not-found")
        kubectl("delete", "lease", state.lock_lease, "-n", namespace, "--ignore-not-found")
