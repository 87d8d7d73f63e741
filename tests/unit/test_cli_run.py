"""`blacktop run --local` when the local node cannot start: one clear message and exit code 1, not a
traceback, and what was started before it is removed (the CLI's adapters are faked here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from blacktop import cli
from blacktop.localcluster.node import NodeError

pytestmark = pytest.mark.unit


class _NodeThatFails:
    """Stands in for LocalCluster: its node fails the way a host out of inotify instances makes it."""

    def __init__(self, *, node: bool) -> None:
        self.node = node

    def __enter__(self) -> _NodeThatFails:
        raise NodeError("node kube-proxy exited with 1\n----- node kube-proxy -----\ntoo many open files")

    def __exit__(self, *exc: object) -> None:
        raise AssertionError("never entered, so never exited")


def test_a_node_that_does_not_start_is_one_message_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    made: list[Path] = []

    def mkdtemp(prefix: str = "") -> str:
        path = tmp_path / f"{prefix}made"
        path.mkdir()
        made.append(path)
        return str(path)

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("BLACKTOP_WORKSPACE_ROOT", raising=False)
    monkeypatch.setattr(cli.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(cli, "LocalCluster", _NodeThatFails)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)

    def no_operator(*_: Any, **__: Any) -> None:
        raise AssertionError("the operator must not start without its cluster")

    monkeypatch.setattr("blacktop.handlers.main.run_operator", no_operator)
    code = cli.main(["run", "--local", "--install"])

    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[0] == "blacktop run: the local node did not start: node kube-proxy exited with 1"
    assert "too many open files" in err  # the node's log tail says why
    assert err.rstrip().endswith("add --no-node")
    # The workspace folder made before the cluster was removed again.
    assert made
    assert not any(p.exists() for p in made)
