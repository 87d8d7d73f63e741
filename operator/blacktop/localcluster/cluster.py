"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

envtest-style: no kubelet, no scheduler, no containers — just the API with RBAC, admission, CRDs,
webhooks, ServiceAccount tokens, garbage collection and namespace deletion, which is everything an
operator talks to. Used by `blacktop run --local`, `blacktop cluster up` and the test suite.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import yaml

from blacktop.localcluster import pki, processes
from blacktop.toolbox import find_tool

logger = logging.getLogger(__name__)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
SERVICE_CIDR = "10.0.0.0/24"
# The name in the client certificate the apiserver presents to admission webhooks (see
# _webhook_admission_config); the operator accepts reviews only from it (BLACKTOP_WEBHOOK_CLIENT_NAMES).
WEBHOOK_CLIENT_NAME = "kube-apiserver-webhook-client"


class ClusterStartError(RuntimeError):
    """The control plane did not come up; the message carries the components' log tails."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, *, user: str) -> Path:
    """A self-contained kubeconfig (certificates embedded) for one client identity."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "blacktop-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}],
        "contexts": [{"name": "blacktop-local", "context": {"cluster": "blacktop-local", "user": user}}],
        "current-context": "blacktop-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


class LocalCluster:
    """Start with ``with LocalCluster() as cluster:``; ``cluster.kubeconfig`` is an admin kubeconfig."""

    def __init__(self, workdir: Path | None = None, *, keep: bool = False, detached: bool = False) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="blacktop-cluster-"))
        self.keep = keep
        self.detached = detached
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = 0
        self.apiserver_port = 0
        self._ca: pki.CertificateAuthority | None = None

    # -- public surface ---------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate (PEM)."""
        return self.workdir / "pki" / "ca.crt"

    @property
    def webhook_client_ca(self) -> Path:
        """The CA that signed the apiserver's client certificate for webhook calls (its CN is
        WEBHOOK_CLIENT_NAME): what a webhook trusts to tell the apiserver from anyone else."""
        return self.ca_file

    @property
    def log_files(self) -> dict[str, Path]:
        """Component name → its log file."""
        return {name: self.workdir / "logs" / f"{name}.log" for name in COMPONENTS}

    def logs_tail(self, lines: int = 60) -> str:
        """The last lines of every component's log, for a failing test's report."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            parts.append(f"----- {name} ({path}) -----\n" + "\n".join(text))
        return "\n".join(parts)

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` with a client certificate."""
        if self._ca is None:
            raise RuntimeError("the cluster is not started")
        stem = f"user-{user}".replace("/", "_").replace(":", "_")
        pair = self._ca.issue(stem, user, organizations=tuple(groups))
        return write_kubeconfig(
            self.workdir / f"{stem}.kubeconfig", self.server, self.ca_file, pair.cert, pair.key, user=user
        )

    @property
    def pids(self) -> dict[str, int]:
        """Component name → pid (leader of its process group)."""
        return {name: proc.pid for name, proc in self.procs.items()}

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd, the apiserver and the controller-manager; return once the cluster is usable."""
        started = time.monotonic()
        binaries = {name: str(find_tool(name)) for name in COMPONENTS}
        for sub in ("pki", "logs", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start(binaries)
        except BaseException:
            self.stop()
            raise
        logger.info("local control plane ready at %s in %.1fs", self.server, time.monotonic() - started)

    def stop(self) -> None:
        """Stop every component (controller-manager first, etcd last) and remove the data."""
        for name in reversed(COMPONENTS):
            proc = self.procs.pop(name, None)
            if proc is not None:
                processes.stop_group(proc.pid)
                proc.wait(timeout=5)
        if not self.keep and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- internals ------------------------------------------------------------------------------------

    def _start(self, binaries: dict[str, str]) -> None:
        pki_dir = self.workdir / "pki"
        self._ca = ca = pki.CertificateAuthority(pki_dir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server_ips=("127.0.0.1", "10.0.0.1"),
            client=False,
        )
        admin = ca.issue("admin", "blacktop-admin", organizations=("system:masters",))
        kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        apiserver_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        sa = pki.service_account_keys(pki_dir)

        self.etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self._launch(
            "etcd",
            [
                binaries["etcd"],
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                # A throwaway test cluster: skipping fsync makes it several times faster, and losing
                # its data on a power cut costs nothing.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), "etcd", timeout=30)

        self.apiserver_port = free_port()
        self._launch(
            "kube-apiserver",
            [
                binaries["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert_path}",
                f"--kubelet-client-certificate={apiserver_client.cert}",
                f"--kubelet-client-key={apiserver_client.key}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--api-audiences=https://kubernetes.default.svc",
                "--authorization-mode=RBAC",
                f"--admission-control-config-file={self._webhook_admission_config(ca)}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # The only address is loopback, which the default endpoints reconciler refuses to publish.
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        )
        write_kubeconfig(self.kubeconfig, self.server, ca.cert_path, admin.cert, admin.key, user="blacktop-admin")
        self._wait(self._readyz, "kube-apiserver /readyz", timeout=90)

        kcm_config = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            self.server,
            ca.cert_path,
            kcm.cert,
            kcm.key,
            user="system:kube-controller-manager",
        )
        self._launch(
            "kube-controller-manager",
            [
                binaries["kube-controller-manager"],
                f"--kubeconfig={kcm_config}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.cert_path}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                # No nodes here: the node controllers would only log noise.
                "--controllers=*,-nodeipam,-nodelifecycle",
                "--secure-port=0",
                f"--cluster-signing-cert-file={ca.cert_path}",
                f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                "--v=1",
            ],
        )
        # The ServiceAccount controller creates `default` in `default`: the controller-manager works.
        self._wait(self._default_service_account, "kube-controller-manager (ServiceAccount default/default)", 60)

    def _webhook_admission_config(self, ca: pki.CertificateAuthority) -> Path:
        """An --admission-control-config-file giving the apiserver a client certificate (issued by the
        cluster CA, CN WEBHOOK_CLIENT_NAME) for every admission webhook it calls: `*` matches any host."""
        pair = ca.issue("webhook-client", WEBHOOK_CLIENT_NAME)
        kubeconfig = self.workdir / "webhook-client.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "users": [{"name": "*", "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
        }
        kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        kubeconfig.chmod(0o600)
        plugin = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(kubeconfig),
        }
        admission = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                {"name": name, "configuration": plugin}
                for name in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")
            ],
        }
        path = self.workdir / "admission-config.yaml"
        path.write_text(yaml.safe_dump(admission, sort_keys=False), encoding="utf-8")
        return path

    def _launch(self, name: str, argv: list[str]) -> None:
        self.procs[name] = processes.start(argv, self.log_files[name], die_with_parent=not self.detached)

    def _wait(self, probe: object, what: str, timeout: float) -> None:
        assert callable(probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterStartError(f"{name} exited with {proc.returncode}\n{self.logs_tail(25)}")
            if probe():
                return
            time.sleep(0.1)
        raise ClusterStartError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs_tail(25)}")

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        pki_dir = self.workdir / "pki"
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return context

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 (loopback)
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _readyz(self) -> bool:
        return self._http_ok(f"{self.server}/readyz", self._ssl())

    def _default_service_account(self) -> bool:
        url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        return self._http_ok(url, self._ssl())

    def get_json(self, path: str) -> dict[str, object]:
        """GET an API path as admin (small helper for readiness checks and the CLI)."""
        with urllib.request.urlopen(f"{self.server}{path}", timeout=5, context=self._ssl()) as response:  # noqa: S310
            data: dict[str, object] = json.loads(response.read())
            return data
