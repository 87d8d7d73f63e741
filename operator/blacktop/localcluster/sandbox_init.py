"""pid 1 of a local node's sandbox: private mounts, then reap children until killed.

Started by :mod:`blacktop.localcluster.node` as ``unshare --net --pid --mount --fork --kill-child
--mount-proc python3 sandbox_init.py READY_FILE`` and run as a plain script (standard library only,
nothing of blacktop imported), because it must be small and never fail once it runs. Everything of the
node (containerd, its shims and containers, kubelet, kube-proxy) later joins this process's namespaces
with ``nsenter``; when this process dies, the kernel kills every other process of the pid namespace
and drops the namespaces with their mounts, iptables chains, bridge and veth.

Inside the new mount namespace (propagation private, so nothing leaks to the host):
- ``/`` becomes rshared within the sandbox, as kubelet and container runtimes expect for volume mounts;
- fresh tmpfs on /run (containerd's sockets; its shim sockets and runc state are fixed under
  /run/containerd), /var/log (kubelet's /var/log/pods and /var/log/containers) and /var/lib (CNI's
  result cache under /var/lib/cni is not configurable in containerd 1.6), so nothing the node writes
  there reaches the host;
- the node's disk state folders (``STATE/kubelet``, ``STATE/containerd``) bound at the usual
  /var/lib/kubelet and /var/lib/containerd: the usual paths are short, and unix sockets (kubelet's
  plugin and pod-resources sockets live under its root dir) must stay under 108 bytes, which a test's
  temporary folder easily is not;
- the kernel settings kubelet insists on (vm.overcommit_memory, kernel.panic, ...) are read-only
  bind mounts of files holding the values it expects, so kubelet checks them (protectKernelDefaults)
  without changing the host kernel's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The values kubelet's setupKernelTunables expects (pkg/kubelet/cm/container_manager_linux.go).
KERNEL_DEFAULTS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
PRIVATE_TMPFS = ("/run", "/var/log", "/var/lib")
DISK_STATE = ("kubelet", "containerd")  # STATE/<name> -> /var/lib/<name>


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def _fake_kernel_defaults(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in KERNEL_DEFAULTS.items():
        target = Path("/proc/sys") / key
        if not target.exists():
            continue
        fake = folder / key.replace("/", ".")
        fake.write_text(value + "\n")
        _run("mount", "--bind", str(fake), str(target))
        _run("mount", "-o", "remount,bind,ro", str(target))


def _kill_all(*_: object) -> None:
    os.kill(-1, signal.SIGKILL)  # every other process of the sandbox's pid namespace
    os._exit(0)


def main() -> int:
    state = Path(sys.argv[1])
    ready = state / "sandbox.ready"
    _run("mount", "--make-rshared", "/")
    for target in PRIVATE_TMPFS:
        _run("mount", "-t", "tmpfs", "-o", "mode=0755,size=4g", "blacktop-node", target)
    for name in DISK_STATE:
        (state / name).mkdir(parents=True, exist_ok=True)
        Path("/var/lib", name).mkdir()
        _run("mount", "--bind", str(state / name), f"/var/lib/{name}")
    _fake_kernel_defaults(state / "kernel-defaults")
    _run("ip", "link", "set", "lo", "up")
    # As pid 1 of its namespace this process ignores signals it has no handler for: say what TERM does.
    signal.signal(signal.SIGTERM, _kill_all)
    ready.write_text("ready\n")
    while True:  # reap whatever the node's processes orphan
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
