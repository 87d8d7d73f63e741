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
the tool as a child process of the operator; a runner that runs it in a pod implements the same
protocols, and nothing above this module changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import PlanSummary
from blacktop.terraform.errors import Classification
from blacktop.terraform.redact import tail
from blacktop.terraform.state import StateRef

JSON = dict[str, Any]
# Waits for a run slot and holds it while one operation runs: ``slot("plan")``. The caller decides
# how slots are shared (today one cluster-wide limit, timed as the ``queued`` stage).
Slot = Callable[[str], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class RunTarget:
    """What a runner works on: one request's module, inputs and state."""

    name: str  # stable and unique per request (a workspace folder, a pod name)
    module: Path  # the module's folder under the operator's modules root
    variables: Mapping[str, Any]
    credentials: Mapping[str, str]  # provider credentials: environment variables, never logged
    state: StateRef


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


@dataclass
class Outputs(RunResult):
    """``outputs``: name → (value, sensitive)."""

    values: dict[str, tuple[Any, bool]] = field(default_factory=dict)


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
        """Apply exactly the saved plan."""
        ...

    async def outputs(self) -> Outputs:
        """The module's outputs from the state."""
        ...

    async def destroy(self) -> RunResult:
        """Destroy everything in the state."""
        ...


class Runners(Protocol):
    """Where runs happen: opens a runner on a target, and forgets a target that is gone."""

    async def open(self, target: RunTarget, slot: Slot) -> Runner:
        """A runner for ``target`` (fresh inputs), waiting on ``slot`` before each operation."""
        ...

    async def discard(self, name: str) -> None:
        """Remove what runs of the target ``name`` left behind (after a destroy)."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop every operation in flight now: ask them to stop, and force them after ``grace``
        seconds (a leader that lost its lease must have nothing running before it can pass)."""
        ...
