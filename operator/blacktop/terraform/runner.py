"""Running OpenTofu/Terraform for one workspace: bounded, cancellable, never blocking the event loop.

Command lines come from python-terraform (the wrapper the platform team chose) through
:func:`command`, which also fixes what it gets wrong on modern binaries: its ``destroy`` adds
``-force`` (rejected since Terraform 0.15 and by OpenTofu) and its ``output()`` cannot read the
current JSON. The processes themselves run as ``asyncio`` subprocesses in their own process group,
so a timeout or an operator shutdown terminates the tool *and* its provider plugins: SIGTERM first,
letting the tool release its state lock, SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_terraform import IsFlagged, Terraform

from blacktop.metrics.registry import Metrics
from blacktop.terraform import workspace
from blacktop.terraform.errors import Classification, classify
from blacktop.terraform.redact import redact

GRACE_SECONDS = 15.0
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
# Loaded here, not in the forked child: dlopen after fork in a threaded process can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def command(binary: str, workdir: Path, operation: str, *args: str, **options: Any) -> list[str]:
    """The argv for one operation, via python-terraform; always non-interactive and colourless."""
    options.setdefault("no_color", IsFlagged)
    if operation in {"init", "plan", "apply", "destroy"}:
        options.setdefault("input", False)
    if operation == "destroy":
        # python-terraform's destroy() would add -force; ask for -auto-approve instead.
        options.pop("force", None)
        options.setdefault("auto_approve", IsFlagged)
    argv: list[str] = Terraform(working_dir=str(workdir), terraform_bin_path=binary).generate_cmd_string(
        operation, *args, **options
    )
    return argv


def parse_outputs(stdout: str) -> dict[str, tuple[Any, bool]]:
    """``output -json`` → name → (value, sensitive). python-terraform's output() cannot read it."""
    data = json.loads(stdout or "{}")
    return {name: (item.get("value"), bool(item.get("sensitive"))) for name, item in data.items()}


@dataclass
class RunResult:
    """What one invocation did."""

    operation: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    ok_codes: tuple[int, ...] = (0,)
    classification: Classification | None = field(default=None)

    @property
    def ok(self) -> bool:
        """Whether the run succeeded (``plan -detailed-exitcode`` also succeeds with 2: changes)."""
        return self.exit_code in self.ok_codes and not self.timed_out


class Runner:
    """Runs tool invocations in one workspace directory with an environment and a timeout."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        env: dict[str, str],
        *,
        timeout: float,
        semaphore: asyncio.Semaphore,
        secrets: tuple[str, ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.env = env
        self.timeout = timeout
        self.semaphore = semaphore
        self.secrets = secrets
        self.metrics = metrics

    async def plan(self) -> RunResult:
        """``plan`` into the workspace's plan file; exit 2 (changes) counts as success, so
        ``exit_code`` tells a plan with changes (2) from one without (0). The caller holds the lock."""
        return await self.run(
            "plan",
            out=workspace.PLAN_FILE,
            var_file=workspace.VAR_FILE,
            lock=False,
            detailed_exitcode=IsFlagged,
            ok_codes=(0, 2),
        )

    async def run(self, operation: str, *args: str, ok_codes: tuple[int, ...] = (0,), **options: Any) -> RunResult:
        """Run one operation; output is redacted before it leaves this method."""
        argv = command(self.binary, self.workdir, operation, *args, **options)
        # With metrics, the wait for a slot and the run itself are timed as stages (queued, init, plan...).
        async with self.metrics.run_slot(self.semaphore, operation) if self.metrics else self.semaphore:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.workdir,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            timed_out = False
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout=self.timeout)
            except TimeoutError:
                timed_out = True
                await _terminate(proc)
                out, err = b"", b""
            except asyncio.CancelledError:
                # Operator shutdown: let the tool release its lock, then go.
                await asyncio.shield(_terminate(proc))
                raise
            seconds = time.monotonic() - started
        code = proc.returncode if proc.returncode is not None else -1
        result = RunResult(
            operation=operation,
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=redact(err.decode(errors="replace"), self.secrets),
            seconds=seconds,
            timed_out=timed_out,
            ok_codes=ok_codes,
        )
        if not result.ok:
            combined = result.stderr + "\n" + redact(result.stdout, self.secrets)
            result.classification = classify(operation, combined, timed_out=timed_out)
        return result


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the operator dies, even by SIGKILL. The tool then stops like on
    shutdown (persisting what it finished) instead of running on unlocked beside the next run. And
    umask 077: plans, lock files and provider caches it writes are the operator's user's only."""
    os.umask(0o077)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after the grace period."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
