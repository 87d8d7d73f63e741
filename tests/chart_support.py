"""Helpers for the Helm chart's tests: rendering with the pinned helm, and Argo CD's health check in Lua."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from blacktop.toolbox import find_tool
from helpers import REPO

CHART = REPO / "charts" / "blacktop"
HEALTH_LUA = CHART / "argocd" / "health.lua"

JSON = dict[str, Any]


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm (built by `make tools`); fails the test with helm's output on an error."""
    cmd = [str(find_tool("helm")), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def set_args(values: dict[str, str]) -> list[str]:
    """`--set key=value` arguments."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


def render(
    release: str = "blacktop",
    namespace: str = "blacktop-system",
    extra: Sequence[str] = (),
    *,
    include_crds: bool = False,
) -> list[JSON]:
    """The chart's manifests as objects (`helm template`)."""
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    if include_crds:
        args.append("--include-crds")
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: Sequence[JSON], kind: str, name: str | None = None) -> list[JSON]:
    """Objects of a kind (and name)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def argocd_health(obj: JSON) -> JSON:
    """Run health.lua the way Argo CD does: the object as the global `obj`, the script returns a table."""
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}
