"""A real node for the local cluster: containerd, kubelet and kube-proxy in a sandbox of their own.

The node runs Pods for real (runc containers, a CNI bridge, Services through kube-proxy in iptables
mode) without touching the host's networking, mounts or kernel settings:

- **Sandbox.** ``unshare --net --pid --mount --fork --kill-child=SIGKILL --mount-proc`` runs
  ``sandbox_init.py`` as pid 1 (see there for the private mounts). containerd, kubelet and kube-proxy
  join its namespaces with ``nsenter``, so their iptables chains, the ``cni0`` bridge, pod network
  namespaces, overlay mounts and container processes all live inside it. When pid 1 dies — a normal
  stop, or SIGKILL of the process that started it (PR_SET_PDEATHSIG on ``unshare``, which
  ``--kill-child`` turns into SIGKILL of pid 1) — the kernel kills every process in the pid namespace
  and drops the namespaces, and with the network namespace the veth pair and the host routes through it.
- **Slot.** A node claims slot ``i`` (0-63) by creating the host veth ``blacktop<i>``, which is atomic,
  so concurrent clusters (a test session and the chart test's own cluster) never share addresses.
  Host side 100.64.i.1/30 (the apiserver listens there), node side 100.64.i.2 (``eth0``, the node's
  InternalIP), pods 100.65.i.0/24, Services 100.66.i.0/24; the host routes both through the node,
  so the apiserver reaches webhooks through their Service like in any cluster.
- **Leftovers.** What can outlive a killed node is kubelet's cgroup folders
  (``/sys/fs/cgroup/<controller>/blacktop-node-<i>``) and a veth whose peer never left the host;
  :func:`sweep_leftovers` removes those of slots nobody holds, and every node start calls it. The
  state folder belongs to the cluster's work dir.
- **Images.** There is no registry: images are OCI archives imported with ``ctr`` (the pause image
  first, as containerd's sandbox image).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from blacktop.localcluster import pki, processes
from blacktop.localcluster.oci import ImageArchive
from blacktop.toolbox import find_tool

logger = logging.getLogger(__name__)

NODE_NAME = "blacktop-node"
SLOTS = 64
HOST_IFACE = "blacktop{slot}"
PEER_IFACE = "btnode{slot}"
CGROUP_ROOT = "blacktop-node-{slot}"
CGROUP_FS = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
SANDBOX_INIT = Path(__file__).with_name("sandbox_init.py")


class NodeError(RuntimeError):
    """The node could not be set up; the message says what failed and carries log tails."""


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of the node in slot ``slot``."""

    slot: int

    @property
    def host_iface(self) -> str:
        """The host end of the veth pair (its existence is the slot's claim)."""
        return HOST_IFACE.format(slot=self.slot)

    @property
    def peer_iface(self) -> str:
        """The sandbox end, before it is renamed eth0 inside."""
        return PEER_IFACE.format(slot=self.slot)

    @property
    def host_ip(self) -> str:
        """The host's address on the link: the apiserver listens here."""
        return f"100.64.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        """The node's InternalIP (eth0 inside the sandbox)."""
        return f"100.64.{self.slot}.2"

    @property
    def pod_cidr(self) -> str:
        """Pod addresses on the node's CNI bridge."""
        return f"100.65.{self.slot}.0/24"

    @property
    def service_cidr(self) -> str:
        """The cluster's Service range (the apiserver's --service-cluster-ip-range)."""
        return f"100.66.{self.slot}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ClusterIP of the `kubernetes` Service (the first of the range)."""
        return f"100.66.{self.slot}.1"

    @property
    def cgroup_root(self) -> str:
        """kubelet's cgroupRoot: the node's pods live below it in every controller."""
        return CGROUP_ROOT.format(slot=self.slot)


def _ip(*args: str, netns_pid: int | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    if netns_pid is not None:
        argv = ["nsenter", f"--target={netns_pid}", "--net", "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result


def _link_exists(name: str) -> bool:
    return (Path("/sys/class/net") / name).exists()


def _cgroup_controllers() -> list[Path]:
    """The mounted cgroup hierarchies (v1 controllers, and v2's `unified` beside them) kubelet uses."""
    if not CGROUP_FS.is_dir():
        return []
    return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and not p.is_symlink())


def _remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup folder bottom-up, first killing anything still in it (a cgroup folder only goes
    once it is empty)."""
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _kill_members(child)
        with contextlib.suppress(OSError):
            child.rmdir()
    _kill_members(path)
    with contextlib.suppress(OSError):
        path.rmdir()


def _kill_members(cgroup: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def sweep_leftovers() -> list[str]:
    """Remove what killed nodes left behind on the host (cgroup folders, a half-made veth) for every
    slot no live node holds; returns a line per removed thing."""
    removed: list[str] = []
    for slot in range(SLOTS):
        net = NodeNetwork(slot)
        if _link_exists(net.host_iface) and _link_exists(net.peer_iface):
            # Both ends still on the host: its node died before moving the peer into its sandbox.
            _ip("link", "delete", net.host_iface, check=False)
            removed.append(f"veth {net.host_iface}")
        if _link_exists(net.host_iface):
            continue  # a live node holds this slot
        for controller in _cgroup_controllers():
            folder = controller / net.cgroup_root
            if folder.is_dir():
                _remove_cgroup_tree(folder)
                removed.append(str(folder))
    return removed


@dataclass(frozen=True)
class ControlPlaneAccess:
    """What the node needs from the control plane: where it is, and the CA that issues identities."""

    server: str
    ca: pki.CertificateAuthority


class LocalNode:
    """One node: ``prepare()`` (sandbox + network, before the apiserver starts, which listens on the
    node's link), then ``start(access)``, ``wait_ready(...)``, ``import_image(...)``, ``stop()``."""

    def __init__(self, workdir: Path, *, detached: bool = False) -> None:
        self.workdir = workdir
        self.detached = detached
        self.network: NodeNetwork | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sandbox: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None

    # -- paths ------------------------------------------------------------------------------------

    @property
    def log_files(self) -> dict[str, Path]:
        """Component name → its log file."""
        return {name: self.workdir / "logs" / f"{name}.log" for name in ("sandbox", *COMPONENTS)}

    # Paths inside the sandbox (see sandbox_init.py): unix sockets must be short.
    CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

    @property
    def pids(self) -> dict[str, int]:
        """Process group leaders: the sandbox (``unshare``) and the components' nsenter wrappers."""
        pids = {name: proc.pid for name, proc in self.procs.items()}
        if self._sandbox is not None:
            pids = {"node-sandbox": self._sandbox.pid, **pids}
        return pids

    # -- lifecycle --------------------------------------------------------------------------------

    def prepare(self) -> NodeNetwork:
        """Start the sandbox and wire it to the host; returns the node's addresses."""
        if os.geteuid() != 0:
            raise NodeError("a local node needs root (network, mount and pid namespaces); use --no-node")
        for name in ("logs", "cni/net.d", "cni/ipam"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        for line in sweep_leftovers():
            logger.info("removed leftover of an earlier node: %s", line)
        ready = self.workdir / "sandbox.ready"
        ready.unlink(missing_ok=True)
        argv = [
            "unshare",
            "--net",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
            "--propagation=private",
            sys.executable,
            "-I",
            str(SANDBOX_INIT),
            str(self.workdir),
        ]
        self._sandbox = processes.start(argv, self.log_files["sandbox"], die_with_parent=not self.detached)
        self._wait(ready.exists, "the node sandbox", timeout=20)
        self._init_pid = self._child_of(self._sandbox.pid)
        self.network = self._claim_slot(self._init_pid)
        return self.network

    def start(self, access: ControlPlaneAccess, images: Iterable[ImageArchive] = ()) -> None:
        """containerd (with the images), kubelet and kube-proxy, talking to ``access.server``."""
        net = self._require_network()
        kubelet_pki = self._identities(access, net)
        self._write_cni_config(net)
        self._launch("containerd", [str(find_tool("containerd")), "--config", str(self._containerd_config(net))])
        self._wait(self._containerd_up, "containerd", timeout=30)
        for image in images:
            self.import_image(image)
        self._prepare_cgroups(net)
        self._launch(
            "kubelet",
            [
                str(find_tool("kubelet")),
                f"--config={self._kubelet_config(net, access, kubelet_pki)}",
                f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
                "--root-dir=/var/lib/kubelet",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={net.node_ip}",
                "--v=1",
            ],
        )
        self._launch("kube-proxy", [str(find_tool("kube-proxy")), f"--config={self._kube_proxy_config(net)}", "--v=1"])

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 90.0) -> None:
        """Wait until ``probe`` (the node is Ready and schedulable, asked of the apiserver) holds."""
        self._wait(probe, f"node {NODE_NAME} to be Ready", timeout=timeout)

    def import_image(self, image: ImageArchive) -> None:
        """Import an OCI archive into the node's containerd (the namespace kubelet uses)."""
        started = time.monotonic()
        result = subprocess.run(
            [*self._ctr(), "images", "import", str(image.path)],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise NodeError(f"importing image {image.name} failed: {result.stderr.strip() or result.stdout.strip()}")
        logger.info("imported image %s into the node in %.1fs", image.name, time.monotonic() - started)

    def stop(self) -> None:
        """Kill the sandbox (and so everything in it), then remove kubelet's cgroups; idempotent."""
        if self._init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        if self._sandbox is not None:
            processes.stop_group(self._sandbox.pid, timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._sandbox.wait(timeout=10)
        for proc in self.procs.values():
            processes.stop_group(proc.pid, timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()
        self._sandbox = None
        self._init_pid = None
        if self.network is not None:
            # The veth went with the network namespace; if it is still there, the sandbox is not gone yet.
            deadline = time.monotonic() + 10
            while _link_exists(self.network.host_iface) and time.monotonic() < deadline:
                time.sleep(0.05)
            for controller in _cgroup_controllers():
                folder = controller / self.network.cgroup_root
                if folder.is_dir():
                    _remove_cgroup_tree(folder)
            self.network = None

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of each component's log."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            parts.append(f"----- node {name} ({path}) -----\n" + "\n".join(text))
        return "\n".join(parts)

    # -- internals ----------------------------------------------------------------------------------

    def _require_network(self) -> NodeNetwork:
        if self.network is None or self._init_pid is None:
            raise NodeError("the node is not prepared")
        return self.network

    def _nsenter(self, argv: list[str]) -> list[str]:
        assert self._init_pid is not None
        return ["nsenter", f"--target={self._init_pid}", "--mount", "--net", "--pid", "--", *argv]

    def _launch(self, name: str, argv: list[str]) -> None:
        self.procs[name] = processes.start(self._nsenter(argv), self.log_files[name], die_with_parent=not self.detached)

    def _ctr(self) -> list[str]:
        """ctr inside the sandbox's mount namespace, where the socket is (the images it imports are
        on the host's file system, which the sandbox sees)."""
        assert self._init_pid is not None
        ctr = [str(find_tool("ctr")), f"--address={self.CONTAINERD_SOCKET}", "--namespace=k8s.io"]
        return ["nsenter", f"--target={self._init_pid}", "--mount", "--", *ctr]

    def _containerd_up(self) -> bool:
        result = subprocess.run(
            [*self._ctr(), "version"], capture_output=True, check=False, stdin=subprocess.DEVNULL, timeout=10
        )
        return result.returncode == 0

    def _wait(self, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in [("sandbox", self._sandbox), *self.procs.items()]:
                if proc is not None and proc.poll() is not None:
                    raise NodeError(f"node {name} exited with {proc.returncode}\n{self.logs_tail(25)}")
            if probe():
                return
            time.sleep(0.1)
        raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs_tail(25)}")

    @staticmethod
    def _child_of(pid: int) -> int:
        """The pid (as the host sees it) of ``unshare``'s forked child: pid 1 of the sandbox."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.02)
        raise NodeError(f"unshare ({pid}) has no child: the sandbox did not start")

    def _claim_slot(self, init_pid: int) -> NodeNetwork:
        """Create the veth of a free slot (atomic: the claim) and wire both ends. The search starts at a
        random slot, so a slot another cluster just freed is not taken again at once (whose last
        state, e.g. a test checking that its stop left nothing, would then look like a leftover)."""
        start = random.randrange(SLOTS)  # noqa: S311 (spreading, not security)
        for slot in ((start + i) % SLOTS for i in range(SLOTS)):
            net = NodeNetwork(slot)
            created = _ip("link", "add", net.host_iface, "type", "veth", "peer", "name", net.peer_iface, check=False)
            if created.returncode != 0:
                continue  # taken (by a live node, or mid-creation by another process)
            try:
                self._wire(net, init_pid)
            except BaseException:
                _ip("link", "delete", net.host_iface, check=False)
                raise
            logger.info(
                "local node in slot %d: node %s, pods %s, services %s",
                slot,
                net.node_ip,
                net.pod_cidr,
                net.service_cidr,
            )
            return net
        raise NodeError(f"all {SLOTS} node slots are taken (`ip link show | grep blacktop`)")

    @staticmethod
    def _wire(net: NodeNetwork, init_pid: int) -> None:
        _ip("link", "set", net.peer_iface, "netns", str(init_pid))
        _ip("addr", "add", f"{net.host_ip}/30", "dev", net.host_iface)
        _ip("link", "set", net.host_iface, "up")
        _ip("link", "set", net.peer_iface, "name", "eth0", netns_pid=init_pid)
        _ip("addr", "add", f"{net.node_ip}/30", "dev", "eth0", netns_pid=init_pid)
        _ip("link", "set", "eth0", "up", netns_pid=init_pid)
        _ip("route", "add", "default", "via", net.host_ip, netns_pid=init_pid)
        subprocess.run(
            ["nsenter", f"--target={init_pid}", "--net", "--", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        for cidr in (net.pod_cidr, net.service_cidr):
            _ip("route", "add", cidr, "via", net.node_ip, "dev", net.host_iface)

    def _identities(self, access: ControlPlaneAccess, net: NodeNetwork) -> pki.KeyPair:
        """Client certificates of kubelet (Node authorizer identity) and kube-proxy, and kubelet's
        serving certificate; writes their kubeconfigs. Returns the serving pair."""
        from blacktop.localcluster.cluster import write_kubeconfig

        ca = access.ca
        kubelet = ca.issue("kubelet-client", f"system:node:{NODE_NAME}", organizations=("system:nodes",))
        proxy = ca.issue("kube-proxy", "system:kube-proxy")
        serving = ca.issue(
            "kubelet-serving",
            f"system:node:{NODE_NAME}",
            server_names=(NODE_NAME,),
            server_ips=(net.node_ip,),
            client=False,
        )
        write_kubeconfig(
            self.workdir / "kubelet.kubeconfig",
            access.server,
            ca.cert_path,
            kubelet.cert,
            kubelet.key,
            user=f"system:node:{NODE_NAME}",
        )
        write_kubeconfig(
            self.workdir / "kube-proxy.kubeconfig",
            access.server,
            ca.cert_path,
            proxy.cert,
            proxy.key,
            user="system:kube-proxy",
        )
        return serving

    def _write_cni_config(self, net: NodeNetwork) -> None:
        config = {
            "cniVersion": "0.4.0",
            "name": "blacktop",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.workdir / "cni" / "net.d" / "10-blacktop.conflist").write_text(json.dumps(config, indent=2))

    def _containerd_config(self, net: NodeNetwork) -> Path:
        cni_bin, cni_conf = Path("/usr/lib/cni"), self.workdir / "cni" / "net.d"
        config = f"""\
# Written by blacktop (localcluster/node.py): a containerd of this node only. /var/lib/containerd is
# the node's state folder and /run a tmpfs, both inside the node's sandbox (sandbox_init.py).
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.CONTAINERD_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without CAP_SYS_RESOURCE containerd cannot lower an oom_score_adj below its own: every sandbox
  # would fail with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        return path

    def _prepare_cgroups(self, net: NodeNetwork) -> None:
        """kubelet wants its cgroupRoot to exist in every controller; cpuset needs cpus/mems set."""
        for controller in _cgroup_controllers():
            folder = controller / net.cgroup_root
            folder.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                parent = controller / knob
                if parent.exists() and (folder / knob).exists() and not (folder / knob).read_text().strip():
                    (folder / knob).write_text(parent.read_text())

    def _kubelet_config(self, net: NodeNetwork, access: ControlPlaneAccess, serving: pki.KeyPair) -> Path:
        resolv = self.workdir / "resolv.conf"
        host_resolv = Path("/etc/resolv.conf")
        resolv.write_text(host_resolv.read_text() if host_resolv.exists() else "")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(access.ca.cert_path)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.CONTAINERD_SOCKET}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{net.cgroup_root}",
            # This machine kind has cgroup v1 and swap may be on: both are fine for a test node.
            "failCgroupV1": False,
            "failSwapOn": False,
            # Checked, not written: the sandbox shows kubelet the values it wants (sandbox_init.py).
            "protectKernelDefaults": True,
            "address": net.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "staticPodPath": "",
            "serializeImagePulls": False,
            # A shared developer machine: never evict pods or delete images because its disk is busy.
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _kube_proxy_config(self, net: NodeNetwork) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.workdir / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": net.pod_cidr,
            "bindAddress": net.node_ip,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the (host-wide) conntrack table size and timeouts alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = self.workdir / "kube-proxy-config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def remove_state(workdir: Path) -> None:
    """Delete a stopped node's state folder (container layers, kubelet's pod folders)."""
    shutil.rmtree(workdir, ignore_errors=True)
