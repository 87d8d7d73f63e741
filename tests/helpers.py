"""Shared test helpers: polling with a deadline, kubectl and the objects it reads and writes, and the
operator as a real process. The one place for helpers more than one test module needs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from blacktop.toolbox import cache_dir, find_tool

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
API = "platform.blacktop.dev/v1alpha1"
# A group that the developers_may_create_environments fixture lets create and change Environments.
DEVELOPERS = "blacktop-test-developers"


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns a truthy value or the deadline passes (then fail with ``what``)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Kubectl:
    """The real kubectl, pointed at the test cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.binary = str(find_tool("kubectl"))

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result


class OperatorProcess:
    """`python -m blacktop run` as a child process, the way users run it, with its log in a file."""

    # Settings every operator of the session gets from its control plane (conftest fills it in): the CA
    # of the apiserver's webhook client certificate, so only the apiserver may post reviews.
    cluster_env: dict[str, str] = {}

    def __init__(self, kubeconfig: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_file = log_file
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.webhook_port = free_port()
        self.portal_port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def _tmpdir(self) -> Path:
        folder = self.log_file.parent / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "BLACKTOP_METRICS_PORT": str(self.metrics_port),
            "BLACKTOP_HEALTH_PORT": str(self.health_port),
            # Tests want quick convergence; production defaults are gentler.
            "BLACKTOP_RESYNC_SECONDS": "10",
            "BLACKTOP_TTL_CHECK_SECONDS": "1",
            # Each operator serves admission on its own port. Only the session operator (conftest)
            # points the cluster's webhook configuration at itself: an operator a test starts and
            # stops (or kills) must not leave a failurePolicy=Fail webhook pointing at nothing.
            "BLACKTOP_WEBHOOK_PORT": str(self.webhook_port),
            "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "false",
            "BLACKTOP_DRIFT_CHECK_SECONDS": "2",
            "BLACKTOP_LEFTOVER_CHECK_SECONDS": "2",
            "BLACKTOP_ROLLOUT_CHECK_SECONDS": "2",
            # Git commits and folder copies, workspaces and every other temporary file (the generated
            # webhook certificate of an operator a test kills) stay with the test's temporary files,
            # not in the host's /tmp.
            "BLACKTOP_MODULE_CACHE_ROOT": str(self.log_file.parent / "module-cache"),
            "BLACKTOP_WORKSPACE_ROOT": str(self.log_file.parent / "workspaces"),
            "TMPDIR": str(self._tmpdir()),
            # Every test operator serves its portal (sign-in by token) on a port of its own.
            "BLACKTOP_PORTAL_PORT": str(self.portal_port),
            # Consumers see their sources' changes, and waiting requests retry, within seconds.
            "BLACKTOP_INPUTS_CHECK_SECONDS": "2",
            "BLACKTOP_DEPENDENCY_RETRY_SECONDS": "3",
            # Notification tests post to a receiver on loopback, and see retries within seconds.
            "BLACKTOP_NOTIFICATION_ALLOWED_URLS": "https://,http://127.0.0.1:",
            "BLACKTOP_NOTIFICATION_BACKOFF_SECONDS": "0.3",
            "BLACKTOP_NOTIFICATION_BACKOFF_CAP_SECONDS": "2",
            "BLACKTOP_NOTIFICATION_MAX_ATTEMPTS": "5",
            **self.cluster_env,
            **self.extra_env,
        }
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blacktop", "run", "--verbose"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        log.close()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, timeout=timeout, what="the operator's liveness endpoint")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crashing node would: no cleanup at all."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_file.exists():
            return "(no operator log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def as_user(user: str, *groups: str) -> list[str]:
    """kubectl arguments that act as ``user`` in ``groups``: a tenant with only the RBAC that
    `blacktop install` (or the chart) and the Environments give them."""
    return [f"--as={user}", *(f"--as-group={group}" for group in groups)]


class Watch:
    """`kubectl get --watch` of a kind in a namespace, in the background: every version of every
    object the API server sends, for tests that must see what happened *between* two polls."""

    def __init__(self, kubectl: Kubectl, kind: str, namespace: str) -> None:
        self._proc = subprocess.Popen(
            [
                kubectl.binary,
                f"--kubeconfig={kubectl.kubeconfig}",
                "get",
                kind,
                "-n",
                namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                self._seen.append(event)
                buffer = buffer.lstrip()[end:]

    def objects(self) -> list[dict[str, Any]]:
        """Every object version seen so far (oldest first)."""
        return [e["object"] for e in list(self._seen) if isinstance(e, dict) and "object" in e]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def apiserver_webhook_cert(cluster: Any) -> tuple[Path, Path]:
    """The client certificate the apiserver presents to webhooks (localcluster's admission config):
    what a test presents to post a review itself to an operator that requires it."""
    pki = Path(cluster.webhook_client_ca).parent
    return pki / "webhook-client.crt", pki / "webhook-client.key"


def unique(prefix: str) -> str:
    """A fresh DNS-label name, so tests never collide with each other or with earlier runs."""
    return f"{prefix}-{os.urandom(3).hex()}"


def kubectl_json(kubectl: Kubectl, args: Sequence[str]) -> dict[str, object]:
    out = kubectl(*args, "-o", "json").stdout
    data: dict[str, object] = json.loads(out)
    return data


# -- objects through kubectl ------------------------------------------------------------------------


def apply_json(kubectl: Kubectl, body: dict[str, Any]) -> None:
    """`kubectl apply` ``body``; fails the test if the apply is refused."""
    kubectl("apply", "-f", "-", input=json.dumps(body))


def try_apply(kubectl: Kubectl, body: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` ``body`` with extra ``args`` (e.g. --dry-run=server) and return the result,
    refused or not: for tests of what admission says."""
    return kubectl("apply", "-f", "-", *args, input=json.dumps(body), check=False)


def get(kubectl: Kubectl, *args: str, missing: Sequence[str] = ()) -> dict[str, Any] | None:
    """`kubectl get ARGS -o json`, or None when the object is NotFound (or the error contains one of
    ``missing``); any other error fails the test."""
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        assert any(words in result.stderr for words in ("NotFound", *missing)), result.stderr
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def condition(obj: dict[str, Any] | None, ctype: str = "Ready") -> dict[str, Any] | None:
    """The status condition of type ``ctype`` of ``obj`` (a copy), or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == ctype:
            return dict(cond)
    return None


def secret_values(kubectl: Kubectl, name: str, namespace: str) -> dict[str, str]:
    """The decoded data of Secret ``namespace/name``, which must exist."""
    secret = get(kubectl, "secret", name, "-n", namespace)
    assert secret is not None, f"secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def event_reasons(kubectl: Kubectl, name: str, namespace: str) -> set[str]:
    """The reasons of the Events about the object ``name`` in ``namespace``."""
    events = json.loads(
        kubectl("get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}", "-o", "json").stdout
    )
    return {e["reason"] for e in events["items"]}


@contextmanager
def scratch_namespace(kubectl: Kubectl, prefix: str) -> Iterator[str]:
    """A fresh namespace for the block, deleted (without waiting) afterwards."""
    name = unique(prefix)
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


# -- Blacktop's kinds ---------------------------------------------------------------------------------


def tiny_golden_path(name: str = "tiny", *, failable: bool = False) -> dict[str, Any]:
    """The example `tiny` golden path (provider-free, provisions in seconds) under ``name``; with
    ``failable`` it also takes a boolean parameter `fail` that makes its runs fail."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
    body["metadata"]["name"] = name
    if failable:
        body["spec"]["parameters"]["properties"]["fail"] = {"type": "boolean", "default": False}
    return body


def slow_golden_path(name: str = "slow-random", count: int = 200) -> dict[str, Any]:
    """A golden path of the fixture module `slow-random`: ``count`` random_id resources of the real
    hashicorp/random provider, so an apply takes seconds with a provider plugin running."""
    return {
        "apiVersion": API,
        "kind": "GoldenPath",
        "metadata": {"name": name},
        "spec": {
            "description": "Many random IDs (a slow apply with a real provider), for fault tests.",
            "module": "slow-random",
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"count_of_ids": {"type": "integer", "minimum": 1, "default": count}},
            },
            "outputs": [{"name": "first"}],
        },
    }


def processes_in(root: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose working directory is under ``root`` (a
    workspace root: the tools and provider plugins of one operator's runs)."""
    found = []
    resolved = root.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
            command = (entry / "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        if cwd == resolved or resolved in cwd.parents:
            found.append((int(entry.name), command))
    return found


def apply_ready(kubectl: Kubectl, body: dict[str, Any], timeout: str = "60s") -> str:
    """Apply the cluster-scoped ``body`` and wait until it is Ready; returns its name."""
    apply_json(kubectl, body)
    name: str = body["metadata"]["name"]
    kubectl("wait", "--for=condition=Ready", f"{body['kind'].lower()}/{name}", f"--timeout={timeout}")
    return name


def environment_body(name: str, team: str, tier: str = "dev", **spec: Any) -> dict[str, Any]:
    """An Environment ``name`` of ``team`` and ``tier``, with any further ``spec`` fields."""
    return {
        "apiVersion": API,
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"team": team, "tier": tier, **spec},
    }


def make_environment(kubectl: Kubectl, name: str, team: str, tier: str = "dev", **spec: Any) -> str:
    """Apply an Environment (see environment_body) and wait until it is Ready; returns its name."""
    apply_json(kubectl, environment_body(name, team, tier, **spec))
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    return name


def service_request(name: str, namespace: str, golden_path: str, **parameters: Any) -> dict[str, Any]:
    """A ServiceRequest ``namespace/name`` of ``golden_path`` with ``parameters``."""
    return {
        "apiVersion": API,
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"goldenPath": golden_path, "parameters": parameters},
    }


def patch_parameters(kubectl: Kubectl, name: str, namespace: str, **parameters: Any) -> None:
    """Change parameters of ServiceRequest ``namespace/name`` (a JSON merge patch of its spec)."""
    patch = json.dumps({"spec": {"parameters": parameters}})
    kubectl("patch", "servicerequest", name, "-n", namespace, "--type=merge", "-p", patch)


def wait_reason(
    kubectl: Kubectl, name: str, namespace: str, reason: str, timeout: float = 120, interval: float = 0.2
) -> dict[str, Any]:
    """Wait until ServiceRequest ``namespace/name`` has a Ready condition with ``reason``; returns it."""
    return wait_for(
        lambda: (c := condition(get(kubectl, "servicerequest", name, "-n", namespace))) and c["reason"] == reason and c,
        timeout=timeout,
        interval=interval,
        what=f"ServiceRequest {name} to report {reason}",
    )


def wait_ready(kubectl: Kubectl, name: str, namespace: str, timeout: float = 180) -> dict[str, Any]:
    """Wait until ServiceRequest ``namespace/name`` is Ready for its current generation; returns it."""

    seen: dict[str, Any] = {}

    def ready() -> dict[str, Any] | None:
        sr = get(kubectl, "servicerequest", name, "-n", namespace)
        seen["status"] = (sr or {}).get("status") or {}
        current = sr is not None and seen["status"].get("observedGeneration") == sr["metadata"]["generation"]
        return sr if current and (condition(sr) or {}).get("status") == "True" else None

    try:
        return wait_for(ready, timeout=timeout, interval=0.5, what=f"ServiceRequest {name} to be Ready")
    except AssertionError as exc:
        # Say where it stopped: its stage, its Ready condition and its last run.
        status = seen.get("status") or {}
        ready_condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        raise AssertionError(
            f"{exc}; stage {status.get('stage')!r}, Ready {ready_condition!r}, lastRun {status.get('lastRun')!r}"
        ) from None


# The real prometheus-operator CRDs (install.sh prometheus-operator-crds puts them in the tool cache).
MONITORING_CRDS = ("prometheusrules", "podmonitors", "servicemonitors")


def install_monitoring_crds(kubectl: Kubectl) -> None:
    """Install the prometheus-operator CRDs (idempotent) and wait until they serve."""
    folder = cache_dir() / "crds" / "monitoring.coreos.com"
    files = [folder / f"monitoring.coreos.com_{name}.yaml" for name in MONITORING_CRDS]
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, (
        f"prometheus-operator CRDs missing: {missing}; run: bash hack/tools/install.sh prometheus-operator-crds"
    )
    for path in files:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in MONITORING_CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s")


def service_account_kubeconfig(admin_kubeconfig: Path, token: str, path: Path, namespace: str | None = None) -> Path:
    """A kubeconfig that authenticates with nothing but ``token`` (a ServiceAccount's), in ``namespace``."""
    config = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    context: dict[str, str] = {"cluster": "test", "user": "token"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": cluster}],
                "users": [{"name": "token", "user": {"token": token}}],
                "contexts": [{"name": "test", "context": context}],
                "current-context": "test",
            }
        )
    )
    path.chmod(0o600)
    return path


# -- the operator's endpoints ---------------------------------------------------------------------------


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    """GET ``url`` (as the token's user, sent as a bearer token): (status, body)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_status(url: str, token: str | None = None) -> int:
    """The status of GET ``url``; 0 while nothing answers (not listening yet)."""
    try:
        return fetch(url, token)[0]
    except OSError:
        return 0


def webhook_urls(kubectl: Kubectl, kind: str = "validatingwebhookconfiguration") -> list[str]:
    """The URLs of the webhook configuration `blacktop` of ``kind`` (empty while there is none)."""
    config = get(kubectl, kind, "blacktop") or {}
    return [h["clientConfig"]["url"] for h in config.get("webhooks") or []]


def scrape_metrics(operator: OperatorProcess) -> str:
    """One scrape of the operator's /metrics, which must answer 200 with the text exposition format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
        return text


def install_blacktop(kubeconfig: Path) -> None:
    """CRDs, cluster RBAC and the operator namespace on that cluster, as `blacktop install` does."""
    from blacktop.kube.client import KubeClient
    from blacktop.kube.install import install

    client = KubeClient.from_kubeconfig(kubeconfig)
    try:
        asyncio.run(install(client))
    finally:
        client.close()
