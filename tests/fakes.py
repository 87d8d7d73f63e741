"""Fakes at the level of Blacktop's own adapters, for fast controller tests that call reconcilers directly.

- :class:`FakeClient`: an in-memory API server behind :class:`blacktop.kube.client.Client`: objects
  by kind, namespace and name, with uids, creation timestamps (from the clock), resourceVersions
  (a replace with a stale one conflicts), generations that move with the spec, the status
  subresource, Events as objects, and refusals a test injects.
- :class:`FakeRunners`: the :class:`blacktop.terraform.runner.Runners` protocol: every operation
  succeeds unless a test scripts a failure; records each operation with the state lock's holder at
  that moment, so a test sees that runs happen under the lock. Like the real state backend, an apply
  writes the plan's resources into the request's state Secret and a destroy empties it. Opening a
  runner can be made to raise (what the real one raises when the disk is full), and operations can
  be held at a gate (a test sees who waits for a run slot meanwhile).
- :class:`Clock`: the time, moved by the test.

They replace Blacktop's adapters, never the integration tests: those run the real apiserver,
OpenTofu and the operator process.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from blacktop.api.common import format_time
from blacktop.config import Settings
from blacktop.controllers.context import Context
from blacktop.controllers.evaluation import Evaluator
from blacktop.controllers.failures import Failure
from blacktop.kube.client import FIELD_MANAGER
from blacktop.kube.errors import ConflictError, KubeApiError, NotFoundError
from blacktop.kube.resources import SERVICEREQUESTS, Resource, resource_for
from blacktop.metrics.registry import create_metrics
from blacktop.terraform.errors import Classification, classify
from blacktop.terraform.plan import summarise
from blacktop.terraform.runner import (
    Announce,
    Ending,
    Outputs,
    PlanResult,
    RunIdentity,
    RunnerBusyError,
    RunResult,
    RunTarget,
    ShownPlan,
    Slot,
)

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
LEASE = resource_for("coordination.k8s.io/v1", "Lease")


class Clock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _merge(target: JSON, patch: JSON) -> JSON:
    """RFC 7386 merge patch: nested maps merge, ``None`` removes, anything else replaces."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class FakeClient:
    """An in-memory API server (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.objects: dict[tuple[str, str, str, str], JSON] = {}  # (apiVersion, kind, namespace, name)
        self.refusals: dict[tuple[str, str], KubeApiError] = {}  # (verb, kind) -> error
        self.calls: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.reached: set[str] = set()  # every reason written into a status condition or an Event
        self._version = 0
        # What the real client knows of itself: the kubeconfig it was built from, who it acts as.
        self.kubeconfig: str | None = None
        self.username = "system:serviceaccount:blacktop-system:blacktop"

    # -- what tests use -------------------------------------------------------------------------

    def close(self) -> None:
        """Nothing to release (the real client's connection pool)."""

    async def whoami(self) -> str:
        """Who the operator is to the API server (the real client asks with a SelfSubjectReview)."""
        return self.username

    def refuse(self, verb: str, kind: str, error: KubeApiError) -> None:
        """Make every ``verb`` (get, list, create, apply, replace, merge_patch, delete) of ``kind`` fail."""
        self.refusals[(verb, kind)] = error

    def put(self, obj: JSON) -> JSON:
        """Store ``obj`` as is (with defaults for what the API server would add); for test setup."""
        obj = copy.deepcopy(obj)
        self._admit(obj)
        self.objects[self._key_of(obj)] = obj
        return copy.deepcopy(obj)

    def stored(self, resource: Resource, name: str, namespace: str | None = None) -> JSON | None:
        """The stored object (no call recorded)."""
        found = self.objects.get((resource.api_version, resource.kind, namespace or "", name))
        return copy.deepcopy(found) if found is not None else None

    def events(self, name: str | None = None) -> list[tuple[str, str, str]]:
        """(type, reason, message) of every Event (about the object ``name``), oldest first."""
        found = [o for (_, kind, _, _), o in self.objects.items() if kind == "Event"]
        found.sort(key=lambda e: e["metadata"]["resourceVersion"])
        return [
            (e["type"], e["reason"], e["message"]) for e in found if name is None or e["involvedObject"]["name"] == name
        ]

    def event_reasons(self, name: str | None = None) -> list[str]:
        return [reason for _, reason, _ in self.events(name)]

    # -- the Client protocol --------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> JSON | None:
        self._call("get", resource.kind, name)
        return self.stored(resource, name, namespace if resource.namespaced else None)

    async def list(
        self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[JSON]:
        self._call("list", resource.kind, namespace or "")
        wanted = dict(part.split("=", 1) for part in label_selector.split(",")) if label_selector else {}
        return [
            copy.deepcopy(obj)
            for (api_version, kind, ns, _), obj in sorted(self.objects.items())
            if (api_version, kind) == (resource.api_version, resource.kind)
            and (namespace is None or ns == namespace)
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def create(self, obj: JSON) -> JSON:
        self._call("create", obj["kind"], obj["metadata"]["name"])
        if obj["kind"] == "Event":
            self.reached.add(obj["reason"])
        if self._key_of(obj) in self.objects:
            raise ConflictError(409, "AlreadyExists", f"{obj['kind']} {obj['metadata']['name']} already exists")
        return self.put(obj)

    async def apply(self, obj: JSON, *, field_manager: str = FIELD_MANAGER, force: bool = True) -> JSON:
        self._call("apply", obj["kind"], obj["metadata"]["name"])
        current = self.objects.get(self._key_of(obj))
        if current is None:
            return self.put(obj)
        merged = _merge(current, obj)
        self._bump(current, merged)
        self.objects[self._key_of(obj)] = merged
        return copy.deepcopy(merged)

    async def replace(self, obj: JSON) -> JSON:
        self._call("replace", obj["kind"], obj["metadata"]["name"])
        current = self.objects.get(self._key_of(obj))
        if current is None:
            raise NotFoundError(404, "NotFound", f"{obj['kind']} {obj['metadata']['name']} not found")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ConflictError(
                409, "Conflict", "the object has been modified; apply your changes to the latest version"
            )
        new = copy.deepcopy(obj)
        new["metadata"] = {**new["metadata"], "uid": current["metadata"]["uid"]}
        self._bump(current, new)
        self.objects[self._key_of(obj)] = new
        return copy.deepcopy(new)

    async def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: JSON,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> JSON:
        self._call("merge_patch", resource.kind, name)
        key = (resource.api_version, resource.kind, namespace if resource.namespaced and namespace else "", name)
        current = self.objects.get(key)
        if current is None:
            raise NotFoundError(404, "NotFound", f"{resource.kind} {name} not found")
        if subresource == "status":
            patch = {"status": patch.get("status")}
            self.reached.update(c["reason"] for c in (patch["status"] or {}).get("conditions") or [])
        merged = _merge(current, patch)
        self._bump(current, merged)
        self.objects[key] = merged
        return copy.deepcopy(merged)

    async def delete(
        self, resource: Resource, name: str, namespace: str | None = None, *, propagation: str = "Background"
    ) -> bool:
        self._call("delete", resource.kind, name)
        key = (resource.api_version, resource.kind, namespace if resource.namespaced and namespace else "", name)
        return self.objects.pop(key, None) is not None

    # -- internals ------------------------------------------------------------------------------

    def _call(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        if (verb, kind) in self.refusals:
            raise self.refusals[(verb, kind)]

    @staticmethod
    def _key_of(obj: JSON) -> tuple[str, str, str, str]:
        resource = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        return (obj["apiVersion"], obj["kind"], meta.get("namespace", "") if resource.namespaced else "", meta["name"])

    def _next_version(self) -> str:
        self._version += 1
        return f"{self._version:08d}"

    def _admit(self, obj: JSON) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", format_time(self.clock()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_version()

    def _bump(self, old: JSON, new: JSON) -> None:
        generation = int(old["metadata"].get("generation", 1))
        if old.get("spec") != new.get("spec"):
            generation += 1
        new["metadata"]["generation"] = generation
        new["metadata"]["resourceVersion"] = self._next_version()


@dataclass
class _Script:
    """What the fake runner's operations return."""

    # operation -> [(stderr, timed out, reason or None: classified from stderr)]
    failures: dict[str, list[tuple[str, bool, str | None]]] = field(default_factory=dict)
    changes: bool = True  # plan: whether applying would change anything
    plan: JSON = field(default_factory=dict)  # show_plan: the plan document
    outputs: dict[str, tuple[Any, bool]] = field(default_factory=dict)
    detach: bool = False  # close("cancelled"): the runner works on without the operator (a pod)
    cancel: set[str] = field(default_factory=set)  # operations that are cancelled (an operator shutdown)
    gate: asyncio.Event | None = None  # operations wait for it (to hold runs in flight)
    busy: str | None = None  # settle: an earlier process's runner does not finish (RunnerBusyError)


SECRET = resource_for("v1", "Secret")


class FakeRunner:
    """A runner whose operations return what the script says; each records the lock's holder."""

    def __init__(self, runners: FakeRunners, target: RunTarget, slot: Slot) -> None:
        self._runners = runners
        self.target = target
        self.slot = slot

    async def _result(self, operation: str, ok_codes: tuple[int, ...] = (0,), code: int = 0) -> RunResult:
        script = self._runners.script
        async with self.slot(operation):
            gate = self._runners.gates.get(self.target.name)
            if gate is not None:
                await gate.wait()
            lease = self._runners.client.stored(LEASE, self.target.state.lock_lease, self.target.state.namespace)
            holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
            self._runners.calls.append((operation, holder))
            self._runners.in_flight.add(self.target.name)
            try:
                if script.gate is not None:
                    await script.gate.wait()
            finally:
                self._runners.in_flight.discard(self.target.name)
            if operation in script.cancel:
                script.cancel.discard(operation)
                raise asyncio.CancelledError
            queued = script.failures.get(operation) or []
            if queued:
                stderr, timed_out, reason = queued.pop(0)
                found = Classification(reason) if reason else classify(operation, stderr, timed_out=timed_out)
                return RunResult(
                    operation, 1, "", stderr, 0.5, timed_out=timed_out, ok_codes=ok_codes, classification=found
                )
            return RunResult(operation, code, "", "", 1.5, ok_codes=ok_codes)

    async def init(self) -> RunResult:
        return await self._result("init")

    async def plan(self) -> PlanResult:
        changes = self._runners.script.changes
        result = await self._result("plan", (0, 2), 2 if changes else 0)
        summary = summarise(self._runners.script.plan) if changes and result.ok else summarise({})
        return PlanResult(**vars(result), summary=summary)

    async def show_plan(self) -> ShownPlan:
        result = await self._result("show")
        plan = copy.deepcopy(self._runners.script.plan) if result.ok else {}
        return ShownPlan(**vars(result), plan=plan, summary=summarise(plan))

    def _save_state(self, addresses: list[str]) -> None:
        """What the kubernetes backend does after a run: the state Secret holds these resources."""
        state = self.target.state
        secret = self._runners.client.stored(SECRET, state.state_secret, state.namespace)
        if secret is None:
            return
        resources = [
            {"mode": "managed", "type": a.split(".")[-2], "name": a.split(".")[-1], "instances": [{}]}
            for a in addresses
        ]
        data = base64.b64encode(gzip.compress(json.dumps({"version": 4, "resources": resources}).encode())).decode()
        self._runners.client.put({**secret, "data": {"tfstate": data}})

    async def apply_plan(self) -> RunResult:
        result = await self._result("apply")
        if result.ok:
            changes = self._runners.script.plan.get("resource_changes") or []
            self._save_state([str(c.get("address")) for c in changes if c.get("mode", "managed") == "managed"])
        return result

    async def outputs(self) -> Outputs:
        result = await self._result("output")
        return Outputs(**vars(result), values=dict(self._runners.script.outputs) if result.ok else {})

    async def destroy(self) -> RunResult:
        result = await self._result("destroy")
        if result.ok:
            self._save_state([])
        return result

    async def close(self, ending: Ending) -> bool:
        self._runners.closed.append(ending)
        return ending == "cancelled" and self._runners.script.detach


class FakeRunners:
    """The Runners protocol over :class:`FakeRunner` (see the module docstring)."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.script = _Script()
        self.opened: list[RunTarget] = []
        self.discarded: list[str] = []
        self.calls: list[tuple[str, str | None]] = []  # (operation, the state lock's holder meanwhile)
        self.runs: list[RunIdentity] = []
        self.closed: list[Ending] = []  # how each run ended, as its runner was told
        self.leftover: str | None = None  # settle: what an earlier process's runner is (None: nothing)
        self.in_flight: set[str] = set()  # targets whose operation runs (waits at the gate) right now
        self.open_errors: list[BaseException] = []  # raised by the next opens, in order
        self.gates: dict[str, asyncio.Event] = {}  # target name -> operations wait until it is set
        self.stopped: list[float] = []  # grace of each stop()

    def fail(
        self,
        operation: str,
        stderr: str = "Error: something odd",
        *,
        timed_out: bool = False,
        reason: str | None = None,
    ) -> None:
        """Make the next ``operation`` (init, plan, show, apply, output, destroy) fail with ``stderr``
        (classified from it, or as ``reason``: a runner pod's failure)."""
        self.script.failures.setdefault(operation, []).append((stderr, timed_out, reason))

    @property
    def operations(self) -> list[str]:
        return [operation for operation, _ in self.calls]

    async def settle(self, target: RunTarget, announce: Announce) -> None:
        if self.script.busy is not None:
            raise RunnerBusyError(self.script.busy)
        if self.leftover is not None:
            await announce(self.leftover)
            lease = self.client.stored(LEASE, target.state.lock_lease, target.state.namespace)
            self.calls.append(("settle", ((lease or {}).get("spec") or {}).get("holderIdentity")))
            self.leftover = None

    async def open(self, target: RunTarget, slot: Slot, run: RunIdentity) -> FakeRunner:
        if self.open_errors:
            raise self.open_errors.pop(0)
        self.opened.append(target)
        self.runs.append(run)
        return FakeRunner(self, target, slot)

    async def stop(self, grace: float) -> None:
        self.stopped.append(grace)

    async def discard(self, name: str) -> None:
        self.discarded.append(name)


@dataclass
class Harness:
    """A Context over the fakes, the fakes themselves, and the steps tests build their world with:
    each step goes through the real reconciler (an Environment is reconciled into its namespace, a
    GoldenPath validated against its module on disk), so a request meets what the operator would make."""

    ctx: Context
    client: FakeClient
    runners: FakeRunners
    clock: Clock

    async def environment(
        self, name: str = "payments-dev", team: str = "payments", tier: str = "dev", **spec: Any
    ) -> str:
        """A Ready Environment; returns its namespace."""
        from blacktop.controllers.environment import reconcile_environment
        from helpers import environment_body

        await reconcile_environment(self.ctx, self.client.put(environment_body(name, team, tier, **spec)))
        return name

    async def golden_path(self, body: JSON | None = None) -> str:
        """A golden path (the example `tiny` one unless ``body``), reconciled; returns its name."""
        from blacktop.controllers.goldenpath import reconcile_golden_path
        from helpers import tiny_golden_path

        stored = self.client.put(body or tiny_golden_path())
        await reconcile_golden_path(self.ctx, stored)
        return str(stored["metadata"]["name"])

    def request(self, name: str, namespace: str, golden_path: str = "tiny", **parameters: Any) -> JSON:
        """A ServiceRequest, stored (as `kubectl apply` would leave it), not yet reconciled."""
        from helpers import service_request

        return self.client.put(service_request(name, namespace, golden_path, **parameters))

    def body(self, name: str, namespace: str) -> JSON:
        """The stored ServiceRequest."""
        found = self.client.stored(SERVICEREQUESTS, name, namespace)
        assert found is not None, f"no ServiceRequest {namespace}/{name}"
        return found

    def status(self, name: str, namespace: str) -> JSON:
        return dict(self.body(name, namespace).get("status") or {})

    def condition(self, name: str, namespace: str, ctype: str = "Ready") -> JSON | None:
        return next((c for c in self.status(name, namespace).get("conditions", []) if c["type"] == ctype), None)

    async def reconcile(self, name: str, namespace: str) -> Failure | None:
        """One reconcile of the stored request, as Kopf would call it; the Failure it raised, if any."""
        from blacktop.controllers.servicerequest import reconcile_service_request

        try:
            await reconcile_service_request(self.ctx, self.body(name, namespace))
        except Failure as failure:
            return failure
        return None

    async def finalize(self, name: str, namespace: str) -> Failure | None:
        """One run of the request's finalizer; the Failure it raised, if any."""
        from blacktop.controllers.servicerequest import finalize_service_request

        try:
            await finalize_service_request(self.ctx, self.body(name, namespace))
        except Failure as failure:
            return failure
        return None


def harness(tmp_path: Path | None = None, **settings: Any) -> Harness:
    """A fresh Context with a fake client, fake runners, a fixed clock and a seeded random source;
    ``settings`` override the defaults (modules come from the repository's terraform-modules)."""
    clock = Clock()
    client = FakeClient(clock)
    runners = FakeRunners(client)
    values: dict[str, Any] = {"modules_root": REPO / "terraform-modules", "max_concurrent_runs": 2, **settings}
    if tmp_path is not None:
        values.setdefault("workspace_root", tmp_path / "workspaces")
        values.setdefault("module_cache_root", tmp_path / "module-cache")
    config = Settings(**values)
    ctx = Context(
        client,
        config,
        runners=runners,
        metrics=create_metrics(),
        clock=clock,
        rng=random.Random(1),
        evaluator=Evaluator(workers=1, timeout=config.guardrail_timeout_seconds, inline=True),
    )
    return Harness(ctx=ctx, client=client, runners=runners, clock=clock)
