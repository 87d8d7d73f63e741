"""Faults from outside, against the real operator process, control plane and OpenTofu:

- a restart with Ready requests costs nothing: no run, no write, no Event, Ready never flips;
- a full disk under the workspaces is reported (WorkspaceError, failures counted) and the request
  recovers within seconds once space is freed;
- a stalled API server (SIGSTOP of its process for 30 s) is reported and every request is Ready
  within seconds of SIGCONT;
- the operator killed with SIGKILL mid-apply, several times: the tool finishes its graceful stop
  (state persisted, lock recovered by the next operator) and no provider plugin outlives it.

Each test runs its own operator (the session operator is stopped meanwhile: two would share the
work), some on their own control plane.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blacktop.localcluster import LocalCluster
from helpers import (
    Kubectl,
    OperatorProcess,
    Watch,
    apply_json,
    apply_ready,
    condition,
    event_reasons,
    get,
    install_blacktop,
    make_environment,
    processes_in,
    service_request,
    slow_golden_path,
    tiny_golden_path,
    unique,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e

TEAM = "payments"


@contextlib.contextmanager
def own_operator(session: OperatorProcess | None, kubeconfig: Path, log: Path, **env: str) -> Iterator[OperatorProcess]:
    """An operator of the test's own (with ``env``), the session's stopped meanwhile."""
    if session is not None:
        session.stop()
    own = OperatorProcess(kubeconfig, log, env=env)
    try:
        own.start()
        yield own
    finally:
        own.stop()
        if session is not None:
            session.start()


def requests_in(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    found = get(kubectl, "servicerequests", "-n", namespace)
    return list((found or {}).get("items") or [])


# -- a restart costs nothing ------------------------------------------------------------------------


def test_a_restart_with_ready_requests_starts_no_run_and_never_flips_ready(
    kubectl: Kubectl, operator: OperatorProcess
) -> None:
    apply_ready(kubectl, tiny_golden_path("tiny-restart"))
    env = make_environment(kubectl, unique("restart-env"), TEAM)
    names = [unique("keep") for _ in range(4)]
    for name in names:
        apply_json(kubectl, service_request(name, env, "tiny-restart"))
    for name in names:
        wait_ready(kubectl, name, env)

    def recorded() -> dict[str, dict[str, Any]] | None:
        # The scorecard's history recorder writes status.history once it has seen Ready: the
        # requests are settled when it has (a write after the restart must then be the restart's).
        found = {r["metadata"]["name"]: r for r in requests_in(kubectl, env)}
        done = all(
            any(c.get("readyAt") for c in ((r.get("status") or {}).get("history") or {}).get("changes") or [])
            for r in found.values()
        )
        return found if done and len(found) == len(names) else None

    before = wait_for(recorded, timeout=30, what="the history recorder to see every request Ready")
    events_before = {name: event_reasons(kubectl, name, env) for name in names}
    watch = Watch(kubectl, "servicerequests", env)
    try:
        for stop in (operator.stop, operator.kill):  # a clean stop, then a crash
            stop()
            offset = len(operator.log_text())
            started = time.monotonic()
            operator.start()

            def settled(offset: int = offset) -> bool:  # every request resumed and found up to date
                log = operator.log_text()[offset:]
                return all(f"{env}/{name} is up to date" in log for name in names)

            wait_for(settled, timeout=90, what="the restarted operator to resume every request")
            print(f"settled {time.monotonic() - started:.1f}s after the start ({stop.__name__})")
    finally:
        watch.stop()
    after = {r["metadata"]["name"]: r for r in requests_in(kubectl, env)}
    for name in names:
        assert after[name]["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"], name
        assert after[name]["status"]["lastRun"] == before[name]["status"]["lastRun"]  # no run at all
        assert event_reasons(kubectl, name, env) == events_before[name]  # no new Event
    # Nothing the watch saw was ever not Ready (Argo CD and Flux would have seen it flip).
    assert {(condition(o) or {}).get("status") for o in watch.objects() if o["metadata"]["name"] in names} <= {"True"}
    kubectl("delete", "environment", env, "--wait=true", "--timeout=180s")


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test and removed after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the filler file, to remove when space is wanted back."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


def test_a_full_disk_is_reported_and_the_request_recovers_within_seconds_of_the_fix(
    kubectl: Kubectl, operator: OperatorProcess, installed: Path, modules_root: Path, tmp_path: Path, tiny_disk: Path
) -> None:
    apply_ready(kubectl, tiny_golden_path("tiny-disk"))
    env = make_environment(kubectl, unique("disk-env"), TEAM)
    filler = fill(tiny_disk)
    with own_operator(
        operator,
        installed,
        tmp_path / "operator.log",
        BLACKTOP_MODULES_ROOT=str(modules_root),
        BLACKTOP_WORKSPACE_ROOT=str(tiny_disk / "workspaces"),
    ):
        name = unique("full")
        apply_json(kubectl, service_request(name, env, "tiny-disk"))

        def reported() -> dict[str, Any] | None:
            sr = get(kubectl, "servicerequest", name, "-n", env)
            ready = condition(sr) or {}
            return sr if ready.get("reason") == "WorkspaceError" and sr and sr["status"]["failures"] >= 2 else None

        sr = wait_for(reported, timeout=90, what="the full disk to be reported")
        ready = condition(sr)
        assert ready is not None
        assert ready["status"] == "False"
        assert "preparing the workspace failed (WorkspaceError" in ready["message"]
        assert "No space left on device" in ready["message"]
        assert condition(sr, "Stalled") is None  # the operator's disk is not the request's fault
        assert "WorkspaceError" in event_reasons(kubectl, name, env)
        filler.unlink()  # the platform team frees space
        fixed = time.monotonic()
        wait_ready(kubectl, name, env, timeout=60)
        recovered = time.monotonic() - fixed
        print(f"Ready {recovered:.1f}s after space was freed")
        assert recovered < 30
        kubectl("delete", "servicerequest", name, "-n", env, "--timeout=120s")
    kubectl("delete", "environment", env, "--wait=true", "--timeout=180s")


# -- an API server stall ----------------------------------------------------------------------------


def test_an_api_server_stall_is_reported_and_requests_recover_within_seconds(
    tmp_path: Path, modules_root: Path
) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        install_blacktop(cluster.kubeconfig)
        kubectl = Kubectl(cluster.kubeconfig)
        stalled = OperatorProcess(
            cluster.kubeconfig,
            tmp_path / "operator.log",
            env={"BLACKTOP_MODULES_ROOT": str(modules_root), "BLACKTOP_MAX_CONCURRENT_RUNS": "1"},
        )
        stalled.start()
        try:
            apply_ready(kubectl, tiny_golden_path("tiny-stall"))
            env = make_environment(kubectl, unique("stall-env"), TEAM)
            names = [unique("stall") for _ in range(8)]
            watch = Watch(kubectl, "servicerequests", env)
            for name in names:
                apply_json(kubectl, service_request(name, env, "tiny-stall"))
            # Work in flight (one run slot, eight requests): now the API server stops answering.
            apiserver = cluster.pids["kube-apiserver"]
            os.kill(apiserver, signal.SIGSTOP)
            try:
                time.sleep(30)  # the fault itself: a 30 s stall
            finally:
                os.kill(apiserver, signal.SIGCONT)
            back = time.monotonic()
            for name in names:
                wait_ready(kubectl, name, env, timeout=90)
            recovered = time.monotonic() - back
            watch.stop()
            print(f"all {len(names)} requests Ready {recovered:.1f}s after the API server came back")
            assert recovered < 45
            seen = {(condition(o) or {}).get("reason") for o in watch.objects()}
            print(f"Ready reasons seen: {sorted(r for r in seen if r)}")
            # The runs the stall stopped said so in status (not "planning ..." and failures 0)...
            assert "ApiUnavailable" in seen
            assert any((o.get("status") or {}).get("failures", 0) >= 1 for o in watch.objects())
            # ... and the operator, unable to renew its lease, stopped them and led again once it could.
            assert "leadership lost" in stalled.log_text()
            assert stalled.log_text().count("leading: holding Lease") >= 2
        finally:
            stalled.stop()


# -- kill -9 mid-apply ------------------------------------------------------------------------------


def test_kill_9_mid_apply_leaves_no_provider_plugin_and_the_next_operator_finishes(
    kubectl: Kubectl, operator: OperatorProcess, installed: Path, modules_root: Path, tmp_path: Path
) -> None:
    apply_ready(kubectl, slow_golden_path("slow-kill", count=400))
    env = make_environment(kubectl, unique("kill-env"), TEAM)
    workspaces = tmp_path / "workspaces"
    settings = {"BLACKTOP_MODULES_ROOT": str(modules_root), "BLACKTOP_WORKSPACE_ROOT": str(workspaces)}
    name = unique("killed")
    operator.stop()
    own = OperatorProcess(installed, tmp_path / "operator.log", env=settings)
    try:
        own.start()
        apply_json(kubectl, service_request(name, env, "slow-kill"))
        for kills in range(1, 4):

            def applying() -> list[tuple[int, str]] | None:
                found = processes_in(workspaces)
                tool_applies = any(" apply " in f" {c} " for _, c in found)
                return found if tool_applies and any("terraform-provider-random" in c for _, c in found) else None

            running = wait_for(applying, timeout=240, interval=0.1, what="an apply with its provider plugin")
            own.kill()  # the operator's process group only: tofu runs in a session of its own
            # The tool got SIGTERM from the kernel (its parent died), stops gracefully, and its
            # plugin goes with it: nothing of this run is left.
            left = wait_for(
                lambda: not processes_in(workspaces) or None, timeout=60, interval=0.2, what="the run to end"
            )
            assert left
            print(f"kill {kills}: {len(running)} process(es) of the run, none left after the kill")
            own.start()
        sr = wait_ready(kubectl, name, env, timeout=300)
        assert sr["status"]["failures"] == 0
        assert not processes_in(workspaces)
        kubectl("delete", "servicerequest", name, "-n", env, "--timeout=180s")
        assert not processes_in(workspaces)
    finally:
        own.stop()
        operator.start()
    kubectl("delete", "environment", env, "--wait=true", "--timeout=180s")
