"""Shared test helpers: polling with a deadline, kubectl, and the operator as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from blacktop.toolbox import find_tool

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


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

    def __init__(self, kubeconfig: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_file = log_file
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.webhook_port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

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
        import urllib.request

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


def unique(prefix: str) -> str:
    """A fresh DNS-label name, so tests never collide with each other or with earlier runs."""
    return f"{prefix}-{os.urandom(3).hex()}"


def kubectl_json(kubectl: Kubectl, args: Sequence[str]) -> dict[str, object]:
    import json

    out = kubectl(*args, "-o", "json").stdout
    data: dict[str, object] = json.loads(out)
    return data
