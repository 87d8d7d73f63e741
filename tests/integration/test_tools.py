"""The pinned tools work offline: OpenTofu installs providers from the filesystem mirror only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from blacktop.toolbox import cache_dir, find_tool
from helpers import REPO

pytestmark = pytest.mark.integration

CONFIG = """
terraform {
  required_providers {
    random = { source = "hashicorp/random", version = "~> 3.9" }
  }
}
resource "random_password" "p" { length = 24 }
resource "terraform_data" "marker" { input = "offline" }
output "length" { value = nonsensitive(length(random_password.p.result)) }
"""


def pinned_versions() -> dict[str, str]:
    """The pins of hack/tools/versions.env (NAME=value lines, comments dropped)."""
    return dict(
        line.split("#")[0].strip().split("=", 1)
        for line in (REPO / "hack" / "tools" / "versions.env").read_text().splitlines()
        if "=" in line.split("#")[0]
    )


def offline_tofu_env(**extra: str) -> dict[str, str]:
    """OpenTofu's environment with the offline mirror's CLI config and no way to reach a registry."""
    return {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(cache_dir() / "tofu.tfrc"),
        "TF_IN_AUTOMATION": "1",
        **extra,
        # Any attempt to reach a registry would fail loudly instead of hanging.
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }


def test_tofu_init_and_apply_use_only_the_offline_mirror(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(CONFIG)
    env = offline_tofu_env(TF_INPUT="0")
    tofu = str(find_tool("tofu"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [tofu, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"tofu {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    run("init", "-no-color")
    run("apply", "-auto-approve", "-no-color")
    outputs = json.loads(run("output", "-json").stdout)
    assert outputs["length"]["value"] == 24
    lock = (tmp_path / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.opentofu.org/hashicorp/random"' in lock
    assert "3.9.0" in lock


def test_versions_are_the_pinned_ones() -> None:
    pins = pinned_versions()
    tofu = subprocess.run([str(find_tool("tofu")), "version", "-json"], capture_output=True, text=True, check=True)
    assert "v" + json.loads(tofu.stdout)["terraform_version"] == pins["OPENTOFU_VERSION"]
    kubectl = subprocess.run(
        [str(find_tool("kubectl")), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    assert json.loads(kubectl.stdout)["clientVersion"]["gitVersion"] == pins["KUBERNETES_VERSION"]
    helm = subprocess.run([str(find_tool("helm")), "version", "--short"], capture_output=True, text=True, check=True)
    assert helm.stdout.startswith(pins["HELM_VERSION"])
    for tool in ("etcd", "kube-apiserver", "kube-controller-manager", "promtool", "prometheus", "postgres", "initdb"):
        assert find_tool(tool).exists()


@pytest.mark.parametrize(
    ("module", "provider", "pin"),
    [
        ("postgres-database", "blacktop/postgresql", "POSTGRESQL_PROVIDER_VERSION"),
        ("web-service", "hashicorp/kubernetes", "KUBERNETES_PROVIDER_VERSION"),
    ],
)
def test_shipped_modules_initialise_offline_with_the_built_providers(
    tmp_path: Path, module: str, provider: str, pin: str
) -> None:
    version = pinned_versions()[pin]
    kind = provider.split("/")[1]
    for host in ("registry.opentofu.org", "registry.terraform.io"):
        binary = cache_dir() / "terraform-mirror" / host / provider / version / "linux_amd64"
        assert (binary / f"terraform-provider-{kind}_v{version}").is_file(), f"missing in the mirror: {binary}"
    for source in (REPO / "terraform-modules" / module).iterdir():
        (tmp_path / source.name).write_text(source.read_text())
    env = offline_tofu_env()
    for args in (["init", "-no-color", "-backend=false"], ["validate", "-no-color"]):
        result = subprocess.run(
            [str(find_tool("tofu")), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"tofu {args[0]}:\n{result.stdout}\n{result.stderr}"
    lock = (tmp_path / ".terraform.lock.hcl").read_text()
    assert f'provider "registry.opentofu.org/{provider}"' in lock
    assert f'version     = "{version}"' in lock
