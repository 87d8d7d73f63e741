"""Which cluster the operator connects to: resolved when the client is made, not when `kubernetes` was imported.

`blacktop run --local` sets $KUBECONFIG after the kubernetes package has been imported; the package
reads it once at import, so the operator used to fall back to in-cluster config and never connect.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from blacktop.kube.client import ClusterConfigError, KubeClient, resolve_kubeconfig
from blacktop.terraform.state import StateRef
from blacktop.terraform.workspace import Backend

pytestmark = pytest.mark.unit


def kubeconfig(path: Path, server: str, token: str = "t0ken") -> Path:
    """A minimal kubeconfig with a bearer token (no files to read, nothing contacted)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A user with no KUBECONFIG, an empty home, and not in a pod."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    return home


def test_kubeconfig_set_after_import_is_used(no_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `blacktop run --local` does: the package is long imported when KUBECONFIG is set.
    path = kubeconfig(tmp_path / "local.kubeconfig", "https://127.0.0.1:6443")
    monkeypatch.setenv("KUBECONFIG", str(path))
    client = KubeClient.from_kubeconfig()
    try:
        assert client.server == "https://127.0.0.1:6443"
        assert client.kubeconfig == str(path)
        conn = client.connection()
        assert (conn.scheme, conn.token, conn.verify) == ("Bearer", "t0ken", False)
    finally:
        client.close()


def test_argument_wins_over_environment(no_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "env", "https://env:1")))
    given = kubeconfig(tmp_path / "given", "https://given:2")
    assert resolve_kubeconfig(given) == str(given)
    client = KubeClient.from_kubeconfig(given)
    try:
        assert client.server == "https://given:2"
    finally:
        client.close()


def test_kubeconfig_list_skips_missing_files_and_merges(
    no_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = kubeconfig(tmp_path / "first", "https://first:1")
    second = kubeconfig(tmp_path / "second", "https://second:2")
    listed = os.pathsep.join([str(tmp_path / "missing"), str(first), str(second)])
    resolved = resolve_kubeconfig(environ={"KUBECONFIG": listed}, home=no_config)
    assert resolved == os.pathsep.join([str(first), str(second)])
    # As kubectl: the first file defining the current context wins.
    monkeypatch.setenv("KUBECONFIG", listed)
    client = KubeClient.from_kubeconfig()
    try:
        assert client.server == "https://first:1"
    finally:
        client.close()


def test_home_kubeconfig_is_the_fallback(no_config: Path) -> None:
    assert resolve_kubeconfig(environ={}, home=no_config) is None
    (no_config / ".kube").mkdir()
    path = kubeconfig(no_config / ".kube" / "config", "https://home:3")
    assert resolve_kubeconfig(environ={}, home=no_config) == str(path)
    assert resolve_kubeconfig(environ={"KUBECONFIG": ""}, home=no_config) == str(path)


def test_named_kubeconfig_that_does_not_exist_is_an_error_not_in_cluster(no_config: Path, tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="does not exist"):
        resolve_kubeconfig(tmp_path / "nope")
    with pytest.raises(ClusterConfigError, match="names no existing file"):
        resolve_kubeconfig(environ={"KUBECONFIG": f"{tmp_path}/a{os.pathsep}{tmp_path}/b"}, home=no_config)


def test_no_configuration_at_all_says_what_to_do(no_config: Path) -> None:
    with pytest.raises(ClusterConfigError, match=r"pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config"):
        KubeClient.from_kubeconfig()


def test_state_backend_uses_the_clients_kubeconfig() -> None:
    def backend(kubeconfig: str | None) -> dict[str, object]:
        config: dict[str, object] = Backend(StateRef("ns", "uid"), kubeconfig).config()["terraform"]["backend"][
            "kubernetes"
        ]
        return config

    assert backend("/a")["config_path"] == "/a"
    assert backend(f"/a{os.pathsep}/b")["config_paths"] == ["/a", "/b"]
    assert backend(None)["in_cluster_config"] is True


def test_kopf_logs_in_to_the_same_cluster(no_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blacktop.handlers.startup import login

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "k", "https://127.0.0.1:7443", token="abc")))
    info = login()
    assert (info.server, info.scheme, info.token, info.insecure) == ("https://127.0.0.1:7443", "Bearer", "abc", True)
