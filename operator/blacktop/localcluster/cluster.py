"""A real local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager, and a node.

With ``node=True`` (the default of `blacktop cluster up`, `make run` as root and the test session)
there is a real node too: kube-scheduler on the host and a sandboxed containerd + kubelet +
kube-proxy (:mod:`blacktop.localcluster.node`), so Pods run, Services route, and the apiserver calls
webhooks through their Service. The apiserver then listens on the host end of the node's link, where
Pods reach it through the `kubernetes` Service. With ``node=False`` it is envtest-style: just the API
on loopback (RBAC, admission, CRDs, webhooks, ServiceAccount tokens, garbage collection, namespace
deletion), which is everything an operator talks to, and starts in seconds.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
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

from blacktop.localcluster import node as nodes
from blacktop.localcluster import pki, processes
from blacktop.localcluster.oci import ImageArchive
from blacktop.toolbox import find_tool

logger = logging.getLogger(__name__)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
NODE_COMPONENTS = ("kube-scheduler",)
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
WORKDIR_PREFIX = "blacktop-cluster-"
_OWNER_LOCK = ".owner.lock"


class ClusterStartError(RuntimeError):
    """The control plane did not come up; the message carries the components' log tails."""


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
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


def sweep_workdirs(parent: Path | None = None) -> list[Path]:
    """Remove the work dirs of local clusters whose owner died without cleaning up (SIGKILL): a live
    cluster holds a lock on its dir, which the kernel releases when its process dies."""
    removed = []
    for candidate in sorted(Path(parent or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*")):
        lock = candidate / _OWNER_LOCK
        if not lock.is_file():
            continue  # not one of ours (or being created right now)
        with contextlib.suppress(OSError), lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


class LocalCluster:
    """Start with ``with LocalCluster() as cluster:``; ``cluster.kubeconfig`` is an admin kubeconfig.

    ``node``: also run a node (needs root); ``images``: OCI archives the node imports at start (its
    pause image is always imported).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        keep: bool = False,
        detached: bool = False,
        node: bool = False,
        images: Sequence[ImageArchive] = (),
    ) -> None:
        self._own_workdir = workdir is None
        for old in sweep_workdirs():
            logger.info("removed the work dir of a local cluster whose process died: %s", old)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._owner = (self.workdir / _OWNER_LOCK).open("a")
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.keep = keep
        self.detached = detached
        self.node: nodes.LocalNode | None = nodes.LocalNode(self.workdir / "node", detached=detached) if node else None
        self.images = tuple(images)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = 0
        self.apiserver_port = 0
        self.host = "127.0.0.1"
        self._ca: pki.CertificateAuthority | None = None

    # -- public surface ---------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The apiserver's URL (loopback, or with a node the host end of the node's link)."""
        return f"https://{self.host}:{self.apiserver_port}"

    @property
    def network(self) -> nodes.NodeNetwork | None:
        """The node's addresses (pods, Services, where the host is seen from pods), if there is a node."""
        return self.node.network if self.node is not None else None

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate (PEM)."""
        return self.workdir / "pki" / "ca.crt"

    @property
    def components(self) -> tuple[str, ...]:
        """The control-plane processes this cluster runs on the host."""
        return COMPONENTS + (NODE_COMPONENTS if self.node is not None else ())

    @property
    def log_files(self) -> dict[str, Path]:
        """Component name → its log file."""
        return {name: self.workdir / "logs" / f"{name}.log" for name in self.components}

    def logs_tail(self, lines: int = 60) -> str:
        """The last lines of every component's log, for a failing test's report."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            parts.append(f"----- {name} ({path}) -----\n" + "\n".join(text))
        if self.node is not None:
            parts.append(self.node.logs_tail(lines // 2))
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
        """Component name → pid (leader of its process group), control plane first, node last."""
        pids = {name: proc.pid for name, proc in self.procs.items()}
        if self.node is not None:
            pids.update({f"node/{name}": pid for name, pid in self.node.pids.items()})
        return pids

    def import_image(self, image: ImageArchive) -> None:
        """Import an OCI archive into the node's containerd, so Pods can run it without a registry."""
        if self.node is None:
            raise RuntimeError("this cluster has no node (started with node=False)")
        self.node.import_image(image)

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the control plane (and the node); return once the cluster is usable (the node Ready)."""
        started = time.monotonic()
        binaries = {name: str(find_tool(name)) for name in self.components}
        for sub in ("pki", "logs", "etcd"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start(binaries)
        except BaseException:
            self.stop()
            raise
        logger.info("local control plane ready at %s in %.1fs", self.server, time.monotonic() - started)

    def stop(self) -> None:
        """Stop the node, then every component (controller-manager first, etcd last); remove the data."""
        if self.node is not None:
            self.node.stop()
        for name in reversed(self.components):
            proc = self.procs.pop(name, None)
            if proc is not None:
                processes.stop_group(proc.pid)
                proc.wait(timeout=5)
        if not self.keep and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not self._owner.closed:
            self._owner.close()

    # -- internals ------------------------------------------------------------------------------------

    def _start(self, binaries: dict[str, str]) -> None:
        pki_dir = self.workdir / "pki"
        service_cidr, service_ip = SERVICE_CIDR, KUBERNETES_SERVICE_IP
        if self.node is not None:
            network = self.node.prepare()
            self.host, service_cidr, service_ip = network.host_ip, network.service_cidr, network.kubernetes_service_ip
        self._ca = ca = pki.CertificateAuthority(pki_dir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=tuple(dict.fromkeys(("127.0.0.1", self.host, service_ip))),
            client=False,
        )
        admin = ca.issue("admin", "blacktop-admin", organizations=("system:masters",))
        kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        # system:masters: kubelets authorize the apiserver's calls (logs, exec) with a SubjectAccessReview.
        apiserver_client = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
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

        self.apiserver_port = free_port(self.host)
        if self.node is not None:
            # The `kubernetes` Service gets real endpoints (this address), and the apiserver reaches
            # kubelets by the InternalIP they report; the Node authorizer scopes what kubelets may do.
            topology = [
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
            ]
        else:
            # The only address is loopback, which the default endpoints reconciler refuses to publish.
            topology = ["--endpoint-reconciler-type=none", "--authorization-mode=RBAC"]
        self._launch(
            "kube-apiserver",
            [
                binaries["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
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
                f"--service-cluster-ip-range={service_cidr}",
                "--allow-privileged=true",
                *topology,
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
                # Pod CIDRs are the node's own (CNI config); without a node the node-lifecycle
                # controller would only log noise, with one it removes the not-ready taint.
                "--controllers=*,-nodeipam" if self.node is not None else "--controllers=*,-nodeipam,-nodelifecycle",
                "--secure-port=0",
                f"--cluster-signing-cert-file={ca.cert_path}",
                f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                "--v=1",
            ],
        )
        # The ServiceAccount controller creates `default` in `default`: the controller-manager works.
        self._wait(self._default_service_account, "kube-controller-manager (ServiceAccount default/default)", 60)
        if self.node is not None:
            self._start_node(binaries)

    def _start_node(self, binaries: dict[str, str]) -> None:
        """kube-scheduler here, then the node's containerd, kubelet and kube-proxy; wait until Ready."""
        assert self._ca is not None
        assert self.node is not None
        ca = self._ca
        scheduler = ca.issue("scheduler", "system:kube-scheduler")
        scheduler_config = write_kubeconfig(
            self.workdir / "scheduler.kubeconfig",
            self.server,
            ca.cert_path,
            scheduler.cert,
            scheduler.key,
            user="system:kube-scheduler",
        )
        self._launch(
            "kube-scheduler",
            [
                binaries["kube-scheduler"],
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )
        from blacktop.localcluster import images

        pause = images.pause_image()
        self.node.start(nodes.ControlPlaneAccess(self.server, ca), [pause, *self.images])
        self.node.wait_ready(self._node_ready)

    def _node_ready(self) -> bool:
        try:
            node = self.get_json(f"/api/v1/nodes/{nodes.NODE_NAME}")
        except (urllib.error.URLError, OSError):
            return False
        status: dict[str, object] = node.get("status") or {}  # type: ignore[assignment]
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}  # type: ignore[attr-defined]
        spec: dict[str, object] = node.get("spec") or {}  # type: ignore[assignment]
        taints = {t["key"] for t in spec.get("taints") or []}  # type: ignore[attr-defined]
        return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

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
