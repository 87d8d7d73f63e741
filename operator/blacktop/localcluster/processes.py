"""Child processes of the local control plane: started in their own process group, stopped for sure.

Each component runs in a new session (its own process group), so stopping it also stops anything it
spawned. Attached clusters also ask the kernel to SIGKILL the child when its parent dies
(PR_SET_PDEATHSIG): a test run killed with SIGKILL leaves no etcd or apiserver behind. SIGKILL, not
SIGTERM: all components get the signal at once, and an apiserver whose etcd just went away hangs in its
graceful shutdown forever (seen here), while the data of an attached cluster is thrown away anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


# Loaded here, not in the forked child: dlopen after fork in a threaded process can deadlock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def _dying_with_parent(death_signal: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child between fork and exec. The signal is sent when the *thread* that forked
        # exits, so attached clusters must be started from a long-lived thread (the main thread).
        _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal)

    return preexec


def start(
    argv: Sequence[str], log_file: Path, *, die_with_parent: bool, death_signal: int = signal.SIGKILL
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_file``; with ``die_with_parent`` the
    kernel sends it ``death_signal`` when this process dies, even by SIGKILL."""
    preexec = _dying_with_parent(death_signal) if die_with_parent else None
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509  (only prctl, no locks taken)
        )


def alive(pid: int) -> bool:
    """Whether a process with that pid exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_group(pid: int, *, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still there after ``timeout``."""
    import time

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
