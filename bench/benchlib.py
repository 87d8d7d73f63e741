"""What the benchmarks share: a free loopback port, waiting with a deadline, the operator as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; give up (exit) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


@dataclass
class Operator:
    """`blacktop run` as a child process on free ports, its log in a file."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def start_operator(kubeconfig: Path, log: Path, **settings: str) -> Operator:
    """The operator against ``kubeconfig`` with its metrics, health, webhook and portal on free ports
    (``ports``), and any further ``BLACKTOP_<NAME>`` settings given as keyword arguments."""
    ports = {name: free_port() for name in ("metrics", "health", "webhook", "portal")}
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        **{f"BLACKTOP_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{f"BLACKTOP_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "blacktop", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Operator(process, ports)
