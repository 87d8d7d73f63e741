"""A local control plane that outlives the command starting it: `blacktop cluster up|down|status`.

Its processes, pids, ports and data live in one state directory (by default in the tool cache), so
`down` finds exactly what `up` started.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from blacktop.localcluster import node as nodes
from blacktop.localcluster import processes
from blacktop.localcluster.cluster import LocalCluster
from blacktop.toolbox import cache_dir


@dataclass(frozen=True)
class ClusterInfo:
    """Where a detached cluster is and what runs it."""

    server: str
    kubeconfig: str
    pids: dict[str, int]


def default_state_dir() -> Path:
    """The state directory `blacktop cluster` uses unless told otherwise."""
    return cache_dir() / "cluster"


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _healthy(info: ClusterInfo, state_dir: Path) -> bool:
    if not all(processes.alive(pid) for pid in info.pids.values()):
        return False
    data = state_dir / "data"
    try:
        context = ssl.create_default_context(cafile=str(data / "pki" / "ca.crt"))
        context.load_cert_chain(str(data / "pki" / "admin.crt"), str(data / "pki" / "admin.key"))
        with urllib.request.urlopen(f"{info.server}/readyz", timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def status(state_dir: Path) -> ClusterInfo | None:
    """The running cluster recorded in ``state_dir``, or None if there is none (or it is broken)."""
    path = _state_file(state_dir)
    if not path.exists():
        return None
    info = ClusterInfo(**json.loads(path.read_text()))
    return info if _healthy(info, state_dir) else None


def up(state_dir: Path, *, node: bool = True) -> ClusterInfo:
    """Start a detached cluster, with a node unless ``node`` is False (or return the healthy one
    already there)."""
    running = status(state_dir)
    if running is not None:
        return running
    down(state_dir)  # clear a half-dead earlier one
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(state_dir / "data", keep=True, detached=True, node=node)
    cluster.start()
    info = ClusterInfo(server=cluster.server, kubeconfig=str(cluster.kubeconfig), pids=cluster.pids)
    _state_file(state_dir).write_text(json.dumps(asdict(info), indent=2))
    return info


def down(state_dir: Path) -> None:
    """Stop the cluster recorded in ``state_dir`` and delete its data."""
    path = _state_file(state_dir)
    if path.exists():
        info = ClusterInfo(**json.loads(path.read_text()))
        # The node first (its sandbox takes everything in it along), then the control plane.
        for pid in reversed(list(info.pids.values())):
            processes.stop_group(pid)
        path.unlink()
    nodes.sweep_leftovers()  # the node's cgroup folders, now that nothing holds its slot
    shutil.rmtree(state_dir / "data", ignore_errors=True)
