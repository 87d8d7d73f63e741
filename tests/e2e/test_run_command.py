"""`blacktop run --local --install` (what `make run` runs): a usable cluster from a second terminal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blacktop.localcluster import processes
from helpers import REPO, Kubectl, free_port, wait_for

pytestmark = pytest.mark.e2e


def test_run_local_gives_a_second_terminal_a_cluster(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        "BLACKTOP_METRICS_PORT": str(free_port()),
        "BLACKTOP_HEALTH_PORT": str(free_port()),
        "BLACKTOP_WEBHOOK_PORT": str(free_port()),  # 9443 may be taken by another local operator
    }
    env.pop("KUBECONFIG", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blacktop", "run", "--local", "--install"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    try:
        match = wait_for(
            lambda: (
                re.search(r"export KUBECONFIG=(\S+)", log.read_text()) or (proc.poll() is not None and log.read_text())
            ),
            timeout=120,
            what="the export KUBECONFIG line",
        )
        assert isinstance(match, re.Match), f"`blacktop run` exited early:\n{match}"
        kubectl = Kubectl(Path(match.group(1)))
        assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        resources = kubectl("api-resources").stdout
        assert "platform.blacktop.dev" in resources
        wait_for(lambda: "running the operator" in log.read_text(), timeout=60, what="the operator to start")
        catalog = kubectl("get", "goldenpaths", "-o", "name").stdout.split()
        assert "goldenpath.platform.blacktop.dev/postgres-database" in catalog
        # The apiserver, etcd and controller-manager are children of the run command.
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False)
        child_pids = [int(p) for p in children.stdout.split()]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(processes.alive(pid) for pid in child_pids):
        time.sleep(0.1)
    assert [pid for pid in child_pids if processes.alive(pid)] == [], log.read_text()[-3000:]
