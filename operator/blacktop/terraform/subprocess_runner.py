"""The subprocess runner: OpenTofu/Terraform as a child process of the operator, one workspace per request.

Command lines come from python-terraform (the wrapper the platform team chose) through
:func:`command`, which also fixes what it gets wrong on modern binaries: its ``destroy`` adds
``-force`` (rejected since Terraform 0.15 and by OpenTofu) and its ``output()`` cannot read the
current JSON. Each request's workspace (:mod:`blacktop.terraform.workspace`) is refreshed from the
module when a runner is opened. ``show_plan`` records the saved plan's sha256 and ``apply_plan``
refuses a plan file that is no longer that one (the plan the guardrails judged is the plan applied). The processes run as ``asyncio`` subprocesses in their own process
group, so a timeout or an operator shutdown terminates the tool *and* its provider plugins: SIGTERM
first, letting the tool release what it holds, SIGKILL after a grace period. Bounded, cancellable,
never blocking the event loop.

The tool outlives the operator well. Its output goes to files in the workspace, read after it
exits: a pipe would lead to a dead reader once the operator is killed, and the tool would die of
SIGPIPE mid-stop, leaving its provider plugins behind. The kernel sends it SIGTERM when the
operator dies (``PR_SET_PDEATHSIG``), so it stops as on shutdown: finishes what is in flight,
persists the state, stops its plugins. Its pid stays recorded in the workspace while it runs; the
next runner opened on that workspace (a restarted operator) waits for such a leftover to finish
its stop (up to the grace period), then kills what is left of its process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_terraform import IsFlagged, Terraform

from blacktop.api.conditions import Reason
from blacktop.config import Settings
from blacktop.terraform import module, workspace
from blacktop.terraform.errors import Classification, classify
from blacktop.terraform.plan import summarise, summarise_stream
from blacktop.terraform.redact import Redactor
from blacktop.terraform.runner import (
    Announce,
    Ending,
    Outputs,
    PlanResult,
    RunIdentity,
    RunResult,
    RunTarget,
    ShownPlan,
    Slot,
    retyped,
)
from blacktop.toolbox import cache_dir, find_tool

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
# Loaded here, not in the forked child: dlopen after fork in a threaded process can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
# What is read back of the tool's output files: a plan's JSON can be large, messages are not.
_STDOUT_LIMIT = 64 * 1024 * 1024
_STDERR_LIMIT = 1024 * 1024


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


def plan_digest(workdir: Path) -> str:
    """sha256 of the saved plan in ``workdir`` ("" when there is none)."""
    path = workdir / workspace.PLAN_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


@dataclass
class SubprocessRunner:
    """Runs the operations of one workspace; every one passes ``-lock=false`` (the caller holds the lock)."""

    binary: str
    workdir: Path
    env: dict[str, str]  # the whole process environment: minimal, credentials included
    timeout: float
    grace: float  # SIGTERM to SIGKILL
    slot: Slot
    # Masks the run's credentials and other requests' outputs (its inputs) in what the tool says.
    redact: Redactor = field(default_factory=Redactor)
    live: set[asyncio.subprocess.Process] = field(default_factory=set)  # tools running now (of all runners)
    shown: str | None = field(default=None, init=False)  # digest of the saved plan show_plan showed

    async def init(self) -> RunResult:
        return await self.run("init", lock=False)

    async def plan(self) -> PlanResult:
        self.shown = None  # a new plan replaces the file: nothing is shown (judged) until show_plan
        # -detailed-exitcode: exit 2 (changes) is a success too, and tells changes from none.
        # -json: the summary comes with the plan (no `show` needed for it); diagnostics are read back
        # into words, so failures are classified and reported as without it.
        result = await self.run(
            "plan",
            out=workspace.PLAN_FILE,
            var_file=workspace.VAR_FILE,
            lock=False,
            detailed_exitcode=IsFlagged,
            json=IsFlagged,
            ok_codes=(0, 2),
            stdout_is_stream=True,
        )
        summary, _ = summarise_stream(result.stdout) if result.ok else (None, "")
        return retyped(PlanResult, result, **({"summary": summary} if summary is not None else {}))

    async def show_plan(self) -> ShownPlan:
        before = await asyncio.to_thread(plan_digest, self.workdir)
        result = await self.run("show", workspace.PLAN_FILE, json=IsFlagged)
        after = await asyncio.to_thread(plan_digest, self.workdir)
        if not result.ok or before != after:  # nothing may swap the file while it is shown
            return retyped(ShownPlan, result)
        plan = json.loads(result.stdout)
        self.shown = after
        return retyped(ShownPlan, result, plan=plan, summary=summarise(plan), digest=after)

    async def apply_plan(self, digest: str | None = None) -> RunResult:
        """Apply the saved plan if it is the one shown (``digest``: the one the caller was shown)."""
        expected = digest or self.shown
        found = await asyncio.to_thread(plan_digest, self.workdir)
        if expected is not None and found != expected:
            return RunResult(
                operation="apply",
                exit_code=1,
                stdout="",
                stderr=f"the saved plan is not the plan that was shown and judged (sha256 {found[:12] or 'none'}, "
                f"shown {expected[:12]}); it is not applied",
                seconds=0.0,
                classification=Classification(Reason.APPLY_FAILED),
            )
        return await self.run("apply", workspace.PLAN_FILE, lock=False)

    async def close(self, ending: Ending) -> bool:
        return False  # the tool is a child process: it never outlives its run (see _die_with_parent)

    async def outputs(self) -> Outputs:
        result = await self.run("output", json=IsFlagged)
        return retyped(Outputs, result, values=parse_outputs(result.stdout) if result.ok else {})

    async def destroy(self) -> RunResult:
        return await self.run("destroy", var_file=workspace.VAR_FILE, lock=False)

    async def run(
        self,
        operation: str,
        *args: str,
        ok_codes: tuple[int, ...] = (0,),
        stdout_is_stream: bool = False,
        **options: Any,
    ) -> RunResult:
        """Run one operation; output is redacted before it leaves this method. Raises WorkspaceError
        when the tool cannot be started or its output not read (the operator's disk)."""
        argv = command(self.binary, self.workdir, operation, *args, **options)
        out_file, err_file = workspace.output_files(self.workdir, operation)
        async with self.slot(operation):
            started = time.monotonic()
            proc = await self._start(argv, out_file, err_file, operation)
            self.live.add(proc)
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), timeout=self.timeout)
            except TimeoutError:
                timed_out = True
                await _terminate(proc, self.grace)
            except asyncio.CancelledError:
                # Operator shutdown: let the tool stop cleanly, then go.
                await asyncio.shield(_terminate(proc, self.grace))
                raise
            finally:
                self.live.discard(proc)
                if proc.returncode is not None:
                    _forget_pid(self.workdir)
            seconds = time.monotonic() - started
        out, err = await asyncio.gather(
            asyncio.to_thread(workspace.read_output, out_file, _STDOUT_LIMIT),
            asyncio.to_thread(workspace.read_output, err_file, _STDERR_LIMIT),
        )
        code = proc.returncode if proc.returncode is not None else -1
        if stdout_is_stream and code not in ok_codes:  # the machine-readable messages, in words
            _, said = summarise_stream(out)
            err = f"{err}\n{said}".strip()
        result = RunResult(
            operation=operation,
            exit_code=code,
            stdout="" if timed_out else out,
            stderr=self.redact(err),
            seconds=seconds,
            timed_out=timed_out,
            ok_codes=ok_codes,
        )
        if not result.ok:
            combined = result.stderr if stdout_is_stream else result.stderr + "\n" + self.redact(result.stdout)
            result.classification = classify(operation, combined, timed_out=timed_out)
        return result

    async def _start(
        self, argv: list[str], out_file: Path, err_file: Path, operation: str
    ) -> asyncio.subprocess.Process:
        """Start the tool writing into the output files, and record its pid in the workspace."""
        try:
            # The operator's user's only, like everything else in the workspace (plans' values show up here).
            with _private_file(out_file) as out, _private_file(err_file) as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=self.workdir,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            with _private_file(workspace.pid_file(self.workdir)) as pid:
                pid.write(str(proc.pid).encode())
        except OSError as exc:
            raise workspace.WorkspaceError(f"cannot start {operation}: {exc.strerror or exc}") from exc
        return proc


@dataclass(frozen=True)
class SubprocessRunners:
    """Opens subprocess runners: a workspace per request under ``workspace_root``, the pinned binary."""

    binary: str  # tofu or terraform: found in the tool cache, else on PATH
    workspace_root: Path
    timeout: float
    grace: float
    kubeconfig: str | None  # how the state backend reaches the cluster (None: in-cluster config)
    cli_config: Path | None  # the CLI configuration pointing at the offline provider mirror
    # Every run checks the module it is about to run (terraform/module.py check_source, check_copy).
    allowed_providers: tuple[str, ...]
    live: set[asyncio.subprocess.Process] = field(default_factory=set)  # tools running now

    @classmethod
    def from_settings(cls, settings: Settings, *, kubeconfig: str | None) -> SubprocessRunners:
        """Runners for the operator process: the backend reaches the cluster with ``kubeconfig``, the
        one the operator's own client was built from (``None``: in-cluster config), so state and the
        objects it belongs to are in the same cluster; providers come from the tool cache's mirror."""
        return cls(
            binary=settings.terraform_binary,
            workspace_root=settings.workspace_root,
            timeout=settings.run_timeout_seconds,
            grace=settings.run_grace_seconds,
            kubeconfig=kubeconfig,
            cli_config=cache_dir() / "tofu.tfrc",
            allowed_providers=settings.allowed_providers,
        )

    async def settle(self, target: RunTarget, announce: Announce) -> None:
        # Runs of an earlier process got SIGTERM when it died (PR_SET_PDEATHSIG); open waits for
        # what is left of such a tool in the workspace (its graceful stop) before anything runs there.
        return None

    async def open(self, target: RunTarget, slot: Slot, run: RunIdentity) -> SubprocessRunner:
        """A runner on a fresh workspace copy of the module; raises ModuleRefused when the module (as
        shipped, or as copied) must not run: nothing of it runs then, not even ``init``."""
        await _await_leftover(self.workspace_root / target.name, self.grace)
        backend = workspace.Backend(target.state, self.kubeconfig)
        await asyncio.to_thread(module.check_source, target.module, target.root)
        workdir = await asyncio.to_thread(
            workspace.prepare, self.workspace_root, target.name, target.module, dict(target.variables), backend
        )
        await asyncio.to_thread(module.check_copy, workdir, target.module.name, self.allowed_providers)
        return SubprocessRunner(
            binary=str(find_tool(self.binary)),
            workdir=workdir,
            env=workspace.environment(self.cli_config, dict(target.credentials)),
            timeout=self.timeout,
            grace=self.grace,
            slot=slot,
            redact=Redactor.of(target.credentials, target.secrets),
            live=self.live,
        )

    async def discard(self, name: str) -> None:
        await asyncio.to_thread(workspace.remove, self.workspace_root, name)

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(_terminate(proc, grace) for proc in list(self.live)))


def _private_file(path: Path) -> BinaryIO:
    """``path`` opened for writing from scratch, mode 0600 (the operator's umask may be wider)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the operator dies, even by SIGKILL. The tool then stops like on
    shutdown (persisting what it finished) instead of running on unlocked beside the next run. And
    umask 077: plans, lock files and provider caches it writes are the operator's user's only."""
    os.umask(0o077)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _forget_pid(workdir: Path) -> None:
    with contextlib.suppress(OSError):
        workspace.pid_file(workdir).unlink()


def _group_in(pgid: int, workdir: Path) -> list[int]:
    """The live processes of process group ``pgid`` working in ``workdir`` (the tool and its
    plugins; the working directory tells them from an unrelated group that reused the number)."""
    members = []
    workdir = workdir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields_after_name = stat[stat.rindex(")") + 2 :].split()
            state, group = fields_after_name[0], int(fields_after_name[2])
            if group == pgid and state != "Z" and Path(os.readlink(entry / "cwd")) == workdir:
                members.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


async def _await_leftover(workdir: Path, grace: float) -> None:
    """A tool an earlier operator started here and did not see end (it was killed): wait for it to
    finish its graceful stop, up to ``grace`` seconds, then kill what is left of its group."""
    pid = await asyncio.to_thread(workspace.recorded_pid, workdir)
    if pid is None or sys.platform != "linux":
        return
    deadline = time.monotonic() + grace
    while await asyncio.to_thread(_group_in, pid, workdir):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            break
        await asyncio.sleep(0.2)
    _forget_pid(workdir)
