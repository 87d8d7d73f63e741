"""The Runner interface: the typed OpenTofu operations of a run, and what they return.

Controllers run OpenTofu only through these two protocols. :meth:`Runners.open` gives a
:class:`Runner` bound to one request's module, variables, credentials and state (a
:class:`RunTarget`); its operations are the steps every run is made of: ``init``, ``plan``
(refreshing from the real infrastructure; says whether anything would change), ``show_plan`` (the
saved plan as JSON, and its summary), ``apply_plan`` (exactly the saved plan, nothing else),
``outputs`` and ``destroy``. The caller holds the request's state lock, so no operation takes the
backend's own lock. Output is redacted before it leaves a runner, and a failed result carries its
classification (:mod:`blacktop.terraform.errors`) and a user-facing :attr:`RunResult.detail`.

Where the tool runs is the implementation's business: workspaces, file names, the tool cache, the
kubeconfig the backend uses. :class:`blacktop.terraform.subprocess_runner.SubprocessRunners` runs
the tool as a child process of the operator; :class:`blacktop.runners.pod_runner.PodRunners` runs
each run in a pod of its own; nothing above this module knows which.

A run's life around its operations: :meth:`Runners.settle` first (wait for whatever an earlier
operator process left running on the target: a runner pod outlives the process that started it),
then :meth:`Runners.open`, the operations, and :meth:`Runner.close` with how the run ended. ``close``
says whether work goes on without the operator (a pod the shutting-down operator leaves to its
successor): then the caller keeps the state lock, so nobody else writes beside it.

The plan that is applied is the plan that was shown: ``show_plan`` reports the saved plan's digest
(:attr:`ShownPlan.digest`) and ``apply_plan`` refuses a saved plan whose digest is not the one shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import PlanSummary
from blacktop.terraform.errors import Classification
from blacktop.terraform.redact import tail
from blacktop.terraform.state import StateRef

JSON = dict[str, Any]
# Waits for the run's slot and times one operation: ``async with slot("plan"): ...``. The caller
# decides how slots are shared (controllers/runs.py: a run keeps its slot from its first operation
# to its end, so a runner pod never outnumbers the slots).
Slot = Callable[[str], AbstractAsyncContextManager[None]]
# How a run ended, as its runner is told when it is closed.
Ending = Literal["succeeded", "failed", "cancelled"]
# Says in status and an Event what a run waits for before it starts (see Runners.settle).
Announce = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class RunIdentity:
    """Which run a runner serves: its ID (status.lastRun.id), the state lock ID it holds, the operation."""

    id: str
    lock_id: str
    operation: str  # apply, destroy, drift


@dataclass(frozen=True)
class RunnerOptions:
    """What the golden path says about its runner pods (pod mode; the local runner ignores it)."""

    image: str | None = None  # None: the operator's default runner image
    requests: Mapping[str, str] = field(default_factory=dict)  # cpu, memory (defaults fill the rest)
    limits: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunTarget:
    """What a runner works on: one request's module, inputs and state."""

    name: str  # stable and unique per request (a workspace folder, a pod name)
    module: Path  # the module's folder under root
    root: Path  # the modules root, or the git tree / kept copy of a revision: the module never reaches out of it
    variables: Mapping[str, Any]
    credentials: Mapping[str, str]  # provider credentials: environment variables, never logged
    state: StateRef
    secrets: tuple[str, ...] = ()  # further values redacted from every output (inputs from other requests)
    credentials_secret: tuple[str, str] | None = None  # (namespace, name) of the Secret they come from
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    request: str = ""  # namespace/name of the request, for people reading what a runner is for


@dataclass
class RunResult:
    """What one operation did."""

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
        """Whether the operation succeeded."""
        return self.exit_code in self.ok_codes and not self.timed_out

    @property
    def reason(self) -> str:
        """The failure class of a failed operation (PlanFailed when it could not be classified)."""
        return self.classification.reason if self.classification else Reason.PLAN_FAILED

    @property
    def detail(self) -> str:
        """What went wrong, in words for status and Events: the redacted tail of the tool's output,
        and for a state lock, whose it is."""
        text = tail(self.stderr or self.stdout) or f"exit code {self.exit_code}"
        found = self.classification
        if found is not None and found.reason == Reason.STATE_LOCKED:
            text = f"the state is locked by {found.lock_holder or 'unknown'} (lock ID {found.lock_id}); {text}"
        return text


@dataclass
class PlanResult(RunResult):
    """``plan``: succeeds with or without changes; ``summary`` counts them (from the tool's own
    machine-readable account, without showing the saved plan)."""

    summary: PlanSummary = field(default_factory=PlanSummary)

    @property
    def changes(self) -> bool:
        """Whether applying the plan would change anything (refreshed from the real infrastructure)."""
        return self.ok and self.exit_code == 2


@dataclass
class ShownPlan(RunResult):
    """``show_plan``: the saved plan as the tool's JSON document, and its summary."""

    plan: JSON = field(default_factory=dict)
    summary: PlanSummary = field(default_factory=PlanSummary)
    digest: str = ""  # sha256 of the saved plan file that was shown: apply_plan applies only that one


@dataclass
class Outputs(RunResult):
    """``outputs``: name → (value, sensitive)."""

    values: dict[str, tuple[Any, bool]] = field(default_factory=dict)


R = TypeVar("R", bound=RunResult)


def retyped(kind: type[R], result: RunResult, **extra: Any) -> R:
    """``result`` as the typed result ``kind`` (e.g. a failure as a ShownPlan), with ``extra`` fields."""
    return kind(**{f.name: getattr(result, f.name) for f in fields(RunResult)}, **extra)


class RunnerBusyError(Exception):
    """A runner an earlier operator process started still works on the target and did not finish in time."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Runner(Protocol):
    """The operations of one run on one target; the caller holds the target's state lock."""

    async def init(self) -> RunResult:
        """Install providers and connect the state backend."""
        ...

    async def plan(self) -> PlanResult:
        """Plan against the real infrastructure and save the plan."""
        ...

    async def show_plan(self) -> ShownPlan:
        """The saved plan as JSON (what guardrails judge) and its summary."""
        ...

    async def apply_plan(self) -> RunResult:
        """Apply exactly the saved plan: the one ``show_plan`` showed, if it was shown (digest checked)."""
        ...

    async def outputs(self) -> Outputs:
        """The module's outputs from the state."""
        ...

    async def destroy(self) -> RunResult:
        """Destroy everything in the state."""
        ...

    async def close(self, ending: Ending) -> bool:
        """The run ended (``ending``): clean up. True when work goes on without the operator (the run was
        cancelled by a shutdown while its runner works on): the caller must then keep the state lock."""
        ...


class Runners(Protocol):
    """Where runs happen: opens a runner on a target, and forgets a target that is gone."""

    async def settle(self, target: RunTarget, announce: Announce) -> None:
        """Before a run of ``target`` takes its state lock: wait until nothing an earlier operator process
        started still works on it (calling ``announce`` with what it waits for, if it waits)."""
        ...

    async def open(self, target: RunTarget, slot: Slot, run: RunIdentity) -> Runner:
        """A runner for ``run`` on ``target`` (fresh inputs), waiting on ``slot`` before each operation.
        Raises :class:`blacktop.terraform.module.ModuleRefused` when the module it would run must not run
        (every run, destroy included, checks exactly what the tool would read)."""
        ...

    async def discard(self, name: str) -> None:
        """Remove what runs of the target ``name`` left behind (after a destroy)."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop every operation in flight now: ask them to stop, and force them after ``grace``
        seconds (a leader that lost its lease must have nothing running before it can pass)."""
        ...
