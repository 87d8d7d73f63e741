"""What Blacktop's benchmarks share: a control plane of their own, the operator as a real process,
fast object creation through the API, polling with deadlines, the operator's /metrics, the
process's memory and CPU, a bare OpenTofu run of a module with the operator's own backend, and
figures printed against their targets (with the machine's load next to them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from python_terraform import IsFlagged

from blacktop.kube.client import KubeClient
from blacktop.kube.errors import ConflictError
from blacktop.kube.install import install
from blacktop.localcluster import LocalCluster
from blacktop.terraform import workspace
from blacktop.terraform.state import state_of
from blacktop.terraform.subprocess_runner import command
from blacktop.toolbox import cache_dir, find_tool

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"
OPERATOR_NS = "blacktop-system"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def quantile(samples: Iterable[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} ({os.cpu_count()} cores)"


def verdict(value: float, target: float, *, below: bool = True) -> str:
    met = value <= target if below else value >= target
    return "meets the target" if met else "MISSES the target"


def report(label: str, value: float, unit: str, target: float, detail: str = "") -> None:
    """One figure against its target, the way every benchmark prints it."""
    print(f"  {label:<46} {value:9.2f} {unit:<6} target <= {target:g} {unit}: {verdict(value, target)}{detail}")


def tiny(name: str = "tiny", drift_check: str = "24h") -> dict[str, Any]:
    """The example tiny golden path; drift is checked rarely, so idle means idle."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["driftCheckInterval"] = drift_check
    return body


def environment(name: str, team: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"team": team, "tier": "dev", **spec},
    }


def request(name: str, namespace: str, golden_path: str = "tiny", **parameters: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"goldenPath": golden_path, "parameters": parameters},
    }


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return ready.get("status") == "True" and status.get("observedGeneration") == obj["metadata"].get("generation")


@dataclass
class Operator:
    """`python -m blacktop run` as the benchmarks run it (:func:`start_operator`)."""

    proc: subprocess.Popen[bytes]
    metrics_port: int
    health_port: int
    webhook_port: int
    log: Path
    portal_port: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def ports(self) -> dict[str, int]:
        return {
            "metrics": self.metrics_port,
            "health": self.health_port,
            "webhook": self.webhook_port,
            "portal": self.portal_port,
        }

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            pairs = frozenset(tuple(part.split("=", 1)) for part in labels.rstrip("}").split(",") if "=" in part)
            found[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
        return found

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def role(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


def start_operator(kubeconfig: Path, log: Path, *, portal: bool = True, **settings: str) -> Operator:
    """The operator against ``kubeconfig`` with its metrics, health, webhook and (``portal``) portal
    on free ports, its output appended to ``log``; ``settings`` are further ``BLACKTOP_<NAME>`` values."""
    metrics, health, webhook = free_port(), free_port(), free_port()
    portal_port = free_port() if portal else 0
    # Everything the operator writes stays in the benchmark's folder (removed with it), not in /tmp.
    work = log.parent
    (work / "tmp").mkdir(exist_ok=True)
    variables = {
        **os.environ,
        "TMPDIR": str(work / "tmp"),
        "BLACKTOP_WORKSPACE_ROOT": str(work / "workspaces"),
        "BLACKTOP_MODULE_CACHE_ROOT": str(work / "module-cache"),
        "KUBECONFIG": str(kubeconfig),
        "BLACKTOP_METRICS_PORT": str(metrics),
        "BLACKTOP_HEALTH_PORT": str(health),
        "BLACKTOP_WEBHOOK_PORT": str(webhook),
        "BLACKTOP_PORTAL_PORT": str(portal_port),
        **{f"BLACKTOP_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "blacktop", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=variables,
            cwd=REPO,
            start_new_session=True,
        )
    return Operator(proc, metrics, health, webhook, log, portal_port)


class Bench:
    """A control plane of its own with Blacktop installed, and the helpers the benchmarks use."""

    def __init__(self, name: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"blacktop-bench-{name}-"))
        self.cluster = LocalCluster(self.work / "cluster")
        self.client: KubeClient | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(16)

    def __enter__(self) -> Bench:
        self.cluster.start()
        self.client = KubeClient.from_kubeconfig(self.cluster.kubeconfig)
        asyncio.run(install(self.client))
        return self

    def __exit__(self, *_: object) -> None:
        if self.client is not None:
            self.client.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.cluster.stop()
        if os.environ.get("BLACKTOP_BENCH_KEEP"):  # the operator's logs and workspaces, to read after
            print(f"  kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    @property
    def kube(self) -> KubeClient:
        assert self.client is not None
        return self.client

    def operator(self, name: str = "operator", **env: str) -> Operator:
        operator = start_operator(
            self.cluster.kubeconfig,
            self.work / f"{name}.log",
            portal=False,
            workspace_root=str(self.work / "workspaces"),
            **env,
        )
        wait(lambda: "leading" in operator.role(), 120, "the operator to lead")
        return operator

    def create(self, body: dict[str, Any]) -> float:
        """Create ``body`` (apply-like: an existing object is left alone); seconds the call took."""
        meta = body["metadata"]
        plural = {"Environment": "environments", "GoldenPath": "goldenpaths", "ServiceRequest": "servicerequests"}.get(
            body["kind"]
        )
        path = f"/apis/{API}/" + (f"namespaces/{meta['namespace']}/" if meta.get("namespace") else "") + f"{plural}"
        if plural is None:
            path = "/apis/platform.blacktop.dev/v1alpha1/guardrailpolicies"
        started = time.perf_counter()
        with contextlib.suppress(ConflictError):
            self.kube.request_sync("POST", path, body=body)
        return time.perf_counter() - started

    def create_many(self, bodies: list[dict[str, Any]]) -> list[float]:
        return list(self.pool.map(self.create, bodies))

    def get(self, path: str) -> dict[str, Any]:
        return self.kube.request_sync("GET", path)

    def requests(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(f"/apis/{API}/namespaces/{namespace}/servicerequests")["items"]
        return items

    def wait_ready(self, kind: str, name: str, timeout: float = 120) -> None:
        wait(lambda: is_ready(self.get(f"/apis/{API}/{kind}/{name}")), timeout, f"{kind}/{name} to be Ready")

    def wait_all_ready(self, namespace: str, count: int, timeout: float, interval: float = 0.5) -> float:
        """Seconds until ``count`` requests of ``namespace`` are Ready (polling one list at a time)."""
        started = time.monotonic()
        wait(
            lambda: sum(map(is_ready, self.requests(namespace))) >= count, timeout, f"{count} Ready requests", interval
        )
        return time.monotonic() - started

    def world(self, namespace: str = "bench-dev", team: str = "bench", golden_path: str = "tiny") -> str:
        """An environment and the tiny golden path, both Ready."""
        self.create(tiny(golden_path))
        self.create(environment(namespace, team))
        self.wait_ready("goldenpaths", golden_path)
        self.wait_ready("environments", namespace)
        return namespace

    def bare_run(self, module: str = "tiny") -> float:
        """Seconds of a bare `tofu init`, `plan -out`, `apply` and `output -json` of ``module`` with the
        operator's backend (the kubernetes backend, a state Secret of its own), nothing else."""
        key = uuid.uuid4().hex
        backend = workspace.Backend(state_of(OPERATOR_NS, key), str(self.cluster.kubeconfig))
        workdir = workspace.prepare(
            self.work / "bare", key, REPO / "terraform-modules" / module, {"name": f"bare-{key[:8]}"}, backend
        )
        binary = str(find_tool("tofu"))
        env = workspace.environment(cache_dir() / "tofu.tfrc", {})
        started = time.perf_counter()
        for argv in (
            command(binary, workdir, "init"),
            command(binary, workdir, "plan", out="tfplan", var_file=workspace.VAR_FILE),
            command(binary, workdir, "apply", "tfplan"),
            command(binary, workdir, "output", json=IsFlagged),
        ):
            subprocess.run(argv, cwd=workdir, env=env, capture_output=True, check=True)
        return time.perf_counter() - started


def admission_review(kind: str, plural: str, obj: dict[str, Any]) -> bytes:
    """An AdmissionReview of a CREATE of ``obj`` by a user of team ``bench`` (a dry run: nothing recorded)."""
    meta = obj["metadata"]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "platform.blacktop.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "platform.blacktop.dev", "version": "v1alpha1", "resource": plural},
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "operation": "CREATE",
                "userInfo": {"username": "alice", "groups": ["bench", "system:authenticated"]},
                "object": obj,
                "oldObject": None,
                "dryRun": True,
            },
        }
    ).encode()


def post_review(port: int, path: str, payload: bytes, tls: ssl.SSLContext) -> dict[str, Any]:
    """POST an AdmissionReview to the operator's webhook on loopback; its answer."""
    req = urllib.request.Request(
        f"https://127.0.0.1:{port}/{path}", data=payload, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, context=tls, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def median(samples: Iterable[float]) -> float:
    return statistics.median(list(samples))
