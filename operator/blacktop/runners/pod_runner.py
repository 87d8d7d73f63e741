"""Pod mode: each run is a pod of its own in the operator's namespace, driven through its exchange Secret.

:class:`PodRunners` implements :class:`~blacktop.terraform.runner.Runners`. A run's pod is started
by its first operation (the run then holds its slot: see controllers/runs.py) with everything it is
made of (:mod:`blacktop.runners.pods`); each operation is a command in the exchange Secret, and the
runner waits for the pod's answer (:mod:`blacktop.runners.exchange`) while it watches the pod: a pod
that is evicted, deleted, OOM-killed, past its deadline or unable to start ends the operation as a
classified failure (RunnerEvicted, RunnerOutOfMemory, Timeout, RunnerFailed), once the pod has
stopped, so the state lock is never released while it could still write.

When the run ends, the pod is told to exit; the exchange and inputs Secrets (outputs, plan,
variables) are deleted at once; a successful run's objects go with its ServiceAccount, a failed
run's pod stays for ``kubectl logs`` (settings.runner_keep_failed_seconds, at most
runner_keep_failed_max pods). A run cancelled by an operator shutdown leaves its pod working:
:meth:`PodRunner.close` says so and the run keeps its state lock. The next operator process, before
it runs that request again, waits for the pod to finish what it was doing and tells it to exit
(:meth:`PodRunners.settle`), so two runs never write one state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from blacktop.api.common import format_time, parse_time
from blacktop.api.conditions import Reason
from blacktop.config import Settings
from blacktop.kube.client import Client
from blacktop.kube.errors import KubeApiError, NotFoundError
from blacktop.kube.resources import resource_for
from blacktop.runners import pods
from blacktop.runners.exchange import Command, decode_answer
from blacktop.terraform import module as modules
from blacktop.terraform.errors import Classification
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
    retyped,
)
from blacktop.terraform.workspace import KEEP

logger = logging.getLogger(__name__)

PODS = resource_for("v1", "Pod")
SECRETS = resource_for("v1", "Secret")
ACCOUNTS = resource_for("v1", "ServiceAccount")
JSON = dict[str, Any]
R = TypeVar("R", bound=RunResult)
# How often the operator looks for an answer: quickly at first (most operations take seconds), then
# once a second; the pod itself is looked at every few seconds.
_FIRST_POLL, _MAX_POLL, _POD_EVERY = 0.1, 1.0, 2.0
_SWEEP_EVERY = 30.0


def _module_files(module: Path) -> dict[str, bytes]:
    """The module's files, as the runner pod gets them (blocking I/O): what a workspace copies."""
    files: dict[str, bytes] = {}
    for path in sorted(module.rglob("*")):
        rel = path.relative_to(module)
        if rel.parts[0] in KEEP or not path.is_file():
            continue
        files[rel.as_posix()] = path.read_bytes()
    return files


def _failed(kind: type[R], operation: str, reason: str, message: str, seconds: float = 0.0) -> R:
    """A result of ``kind`` saying the runner, not the tool, failed."""
    base = RunResult(operation, -1, "", message, seconds, classification=Classification(reason))
    return retyped(kind, base)


class PodRunners:
    """Runs in pods (see the module docstring); ``clock`` gives wall time for the leftovers' ages."""

    def __init__(
        self, client: Client, settings: Settings, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.namespace = settings.namespace
        self.active: set[str] = set()  # runs of this process whose objects exist
        self._swept = float("-inf")

    async def stop(self, grace: float) -> None:
        """Nothing to stop here: a runner pod holds its request's state lock itself, so a pod left
        working by a replica that stops or loses its lease never writes beside another run; the next
        leader waits for it before it runs that request again (:meth:`settle`)."""

    async def settle(self, target: RunTarget, announce: Announce) -> None:
        await self.sweep()
        selector = f"{pods.RUNNER_SELECTOR},{pods.LABEL_REQUEST}={target.state.suffix}"
        for pod in await self.client.list(PODS, self.namespace, label_selector=selector):
            name = pod["metadata"]["name"]
            if name in self.active:
                continue
            if pods.terminated(pod):
                if pods.ANNOTATION_ENDING not in (pod["metadata"].get("annotations") or {}):
                    # It ended after its operator died: nobody deleted its Secrets (outputs, plan) yet.
                    await self.delete_secrets(name)
                    await self.mark_finished(name, "orphaned")
                continue
            labels = pod["metadata"].get("labels") or {}
            await announce(
                f"waiting for runner pod {name} (run {labels.get(pods.LABEL_RUN)}, "
                f"{labels.get(pods.LABEL_OPERATION)}) that an earlier operator process started: "
                "it finishes what it is doing before a new run starts"
            )
            await self._drain(name, pod)
            logger.info("runner pod %s of an earlier operator process has finished", name)

    async def open(self, target: RunTarget, slot: Slot, run: RunIdentity) -> PodRunner:
        # The module as shipped is what the pod gets (bundled from this folder): checked before any
        # of the run's objects exist, like every local run (ModuleRefused).
        await asyncio.to_thread(modules.check_source, target.module, target.root)
        return PodRunner(self, target, slot, run)

    async def discard(self, name: str) -> None:
        # Successful runs leave nothing behind; failed runs' pods are kept for their logs and swept.
        await self.sweep()

    # -- helpers shared by the runners ------------------------------------------------------------

    async def sweep(self) -> None:
        """Remove the objects of runs whose time to be kept is over (at most every 30 s)."""
        if time.monotonic() - self._swept < _SWEEP_EVERY:
            return
        self._swept = time.monotonic()
        accounts = await self.client.list(ACCOUNTS, self.namespace, label_selector=pods.RUNNER_SELECTOR)
        found = await self.client.list(PODS, self.namespace, label_selector=pods.RUNNER_SELECTOR)
        gone = pods.expired(
            pods.leftovers(accounts, found),
            now=self.clock(),
            keep_seconds=self.settings.runner_keep_failed_seconds,
            keep_max=self.settings.runner_keep_failed_max,
            active=self.active,
        )
        for name in gone:
            await self.forget(name)

    async def forget(self, name: str) -> None:
        """Delete a run's objects: its ServiceAccount owns them all (the Secrets go at once, explicitly)."""
        await self.delete_secrets(name)
        await self.client.delete(ACCOUNTS, name, self.namespace)

    async def delete_secrets(self, name: str) -> None:
        """The exchange and inputs Secrets hold outputs, plans and variables: they never outlive the run."""
        await self.client.delete(SECRETS, name, self.namespace)
        await self.client.delete(SECRETS, f"{name}-inputs", self.namespace)

    async def get_pod(self, name: str) -> JSON | None:
        return await self.client.get(PODS, name, self.namespace)

    async def until_terminated(self, name: str) -> bool:
        """Wait until the pod has stopped (its grace period and a margin); whether it did."""
        deadline = time.monotonic() + pods.grace_seconds(self.settings) + 30
        while time.monotonic() < deadline:
            if pods.terminated(await self.get_pod(name)):
                return True
            await asyncio.sleep(0.5)
        return False

    async def send(self, name: str, command: Command) -> None:
        await self.client.merge_patch(SECRETS, name, {"data": {"command": command.encode()}}, self.namespace)

    async def mark_finished(self, name: str, ending: str) -> None:
        """Annotate a kept pod with how and when its run ended (the sweep counts from then)."""
        patch = {
            "metadata": {
                "annotations": {pods.ANNOTATION_ENDING: ending, pods.ANNOTATION_FINISHED: format_time(self.clock())}
            }
        }
        try:
            await self.client.merge_patch(PODS, name, patch, self.namespace)
        except NotFoundError:
            return

    async def _drain(self, name: str, pod: JSON) -> None:
        """Let a pod of an earlier process finish its operation, then tell it to exit; raises
        RunnerBusyError when it does not stop within what is left of its deadline."""
        spec_deadline = float(
            (pod.get("spec") or {}).get("activeDeadlineSeconds") or pods.deadline_seconds(self.settings)
        )
        begun = (pod.get("status") or {}).get("startTime") or pod["metadata"]["creationTimestamp"]
        left = spec_deadline - (self.clock() - parse_time(begun)).total_seconds()
        deadline = time.monotonic() + max(0.0, left) + pods.grace_seconds(self.settings) + 60
        told = False
        while time.monotonic() < deadline:
            current = await self.get_pod(name)
            if pods.terminated(current):
                break
            assert current is not None
            exchange = await self.client.get(SECRETS, name, self.namespace)
            command = Command.decode((exchange or {}).get("data"))
            answer = decode_answer((exchange or {}).get("data"))
            idle = command is not None and answer is not None and answer.seq == command.seq
            if exchange is None or not pods.started(current):
                # Nothing to hand over (it never started, or its exchange is gone): stop it; its
                # SIGTERM handler saves any state before it exits.
                await self.client.delete(PODS, name, self.namespace)
            elif idle and not told and command is not None and command.operation != "exit":
                await self.send(name, Command(command.seq + 1, "exit"))
                told = True
            await asyncio.sleep(1.0)
        else:
            raise RunnerBusyError(
                f"runner pod {name} of an earlier run is still running past its deadline (is its node "
                "unreachable?); once it is gone (`kubectl delete pod --force` after its node is gone) the "
                "request runs again"
            )
        await self.delete_secrets(name)
        await self.mark_finished(name, "adopted")


class PodRunner:
    """One run in one pod (see the module docstring)."""

    def __init__(self, runners: PodRunners, target: RunTarget, slot: Slot, run: RunIdentity) -> None:
        self._runners = runners
        self._client = runners.client
        self._settings = runners.settings
        self._target = target
        self._slot = slot
        self._run = run
        self.name = pods.run_name(run)
        self._seq = 0
        self._created = False  # its ServiceAccount (and so its objects) exist
        self._started_at = 0.0
        self._shown: str | None = None  # digest of the saved plan the last show_plan showed
        self._unsafe = False  # a pod that did not stop when it should: it may still write

    async def init(self) -> RunResult:
        return await self._call(RunResult, "init")

    async def plan(self) -> PlanResult:
        self._shown = None
        return await self._call(PlanResult, "plan")

    async def show_plan(self) -> ShownPlan:
        shown = await self._call(ShownPlan, "show")
        self._shown = shown.digest if shown.ok and shown.digest else None
        return shown

    async def apply_plan(self) -> RunResult:
        # The pod applies the saved plan only if it is still the one it showed us (and we judged).
        return await self._call(RunResult, "apply", digest=self._shown)

    async def outputs(self) -> Outputs:
        return await self._call(Outputs, "output")

    async def destroy(self) -> RunResult:
        return await self._call(RunResult, "destroy")

    async def close(self, ending: Ending) -> bool:
        if not self._created:
            return False
        name, runners = self.name, self._runners
        # The run is over for this process: a pod still working is from now on a leftover, which the
        # next run of the request waits for (settle) before it takes the lock.
        runners.active.discard(name)
        if ending == "cancelled":
            # The operator is shutting down: leave the pod to finish what it does; the next process adopts it.
            alive = not pods.terminated(await runners.get_pod(name))
            if alive:
                logger.warning("leaving runner pod %s working: the next operator process waits for it", name)
                return True
        elif (
            not self._unsafe
            and not pods.terminated(await runners.get_pod(name))
            # Once it has answered `exit` it writes nothing more; otherwise wait until it has stopped.
            and not await self._exited(Command(self._seq + 1, "exit"))
        ):
            await self._client.delete(PODS, name, runners.namespace)
            self._unsafe = not await runners.until_terminated(name)
        if self._unsafe:
            logger.warning("runner pod %s did not stop: its state lock stays held until it has", name)
            return True
        await runners.delete_secrets(name)
        pod = await runners.get_pod(name)
        if pod is None or pod["metadata"].get("deletionTimestamp") or ending == "succeeded":
            await runners.forget(name)  # its pod goes with its ServiceAccount (a deleted one has no logs to keep)
        else:
            await runners.mark_finished(name, ending)  # kept for `kubectl logs` (see the sweep)
        return False

    async def _exited(self, command: Command) -> bool:
        """Tell the pod to exit; whether it said it does (within a few seconds)."""
        try:
            await self._runners.send(self.name, command)
        except NotFoundError:
            return False
        deadline, interval = time.monotonic() + 10, _FIRST_POLL
        while time.monotonic() < deadline:
            exchange = await self._client.get(SECRETS, self.name, self._runners.namespace)
            answer = decode_answer((exchange or {}).get("data"))
            if answer is not None and answer.seq == command.seq:
                return True
            if pods.terminated(await self._runners.get_pod(self.name)):
                return True
            await asyncio.sleep(interval)
            interval = min(_MAX_POLL, interval * 1.5)
        return False

    # -- one operation ------------------------------------------------------------------------------

    async def _call(self, kind: type[R], operation: str, *, digest: str | None = None) -> R:
        async with self._slot(operation):
            started = time.monotonic()
            self._seq += 1
            command = Command(self._seq, operation, digest)
            try:
                if not self._created:
                    await self._start(command)
                else:
                    await self._runners.send(self.name, command)
            except (pods.ModuleTooLargeError, ValueError, KubeApiError) as exc:
                return _failed(kind, operation, Reason.RUNNER_FAILED, f"runner pod {self.name}: {exc}")
            return await self._answer(kind, command, started)

    async def _start(self, command: Command) -> None:
        """Create the run's objects, the first command already in its exchange Secret."""
        target, run, client = self._target, self._run, self._client
        module = pods.bundle(await asyncio.to_thread(_module_files, target.module))
        pods.runner_image(self._settings, target)  # no image: refused before anything is created
        account = await client.create(pods.service_account(target, run))
        self._created = True
        self._runners.active.add(self.name)
        for obj in (
            pods.role(target, run, account),
            pods.role_binding(target, run, account),
            pods.inputs_secret(target, run, account, module),
            pods.exchange_secret(target, run, account, command.encode()),
        ):
            await client.create(obj)
        await client.create(pods.pod(self._settings, target, run, account))
        self._started_at = time.monotonic()
        logger.info("started runner pod %s for %s (run %s, %s)", self.name, target.request, run.id, run.operation)

    async def _answer(self, kind: type[R], command: Command, started: float) -> R:
        """Wait for the pod's answer to ``command``, or for the pod to fail."""
        settings, runners = self._settings, self._runners
        limit = settings.run_timeout_seconds + settings.runner_start_timeout_seconds + pods.grace_seconds(settings) + 60
        interval, looked = _FIRST_POLL, float("-inf")
        while time.monotonic() - started < limit:
            found = await self._answered(kind, command)
            if found is not None:
                return found
            if time.monotonic() - looked >= _POD_EVERY:
                looked = time.monotonic()
                failed = await self._pod_failed(kind, command, started)
                if failed is not None:
                    return failed
            await asyncio.sleep(interval)
            interval = min(_MAX_POLL, interval * 1.3)
        await self._client.delete(PODS, self.name, runners.namespace)
        self._unsafe = not await runners.until_terminated(self.name)
        message = f"runner pod {self.name} gave no answer to {command.operation} in {limit:.0f}s"
        return _failed(kind, command.operation, Reason.TIMEOUT, message, time.monotonic() - started)

    async def _answered(self, kind: type[R], command: Command) -> R | None:
        exchange = await self._client.get(SECRETS, self.name, self._runners.namespace)
        answer = decode_answer((exchange or {}).get("data"))
        if answer is None or answer.seq != command.seq:
            return None
        if answer.terminated:
            # Stopped mid-operation (deleted, evicted, past its deadline): the pod says why, once it has stopped.
            self._unsafe = not await self._runners.until_terminated(self.name)
            pod = await self._runners.get_pod(self.name)
            reason, message = pods.failure(pod, self.name) or (
                Reason.RUNNER_FAILED,
                f"runner pod {self.name} was stopped during {command.operation}",
            )
            detail = f"{message}\n{answer.result.detail}"
            return _failed(kind, command.operation, reason, detail, answer.result.seconds)
        return retyped(kind, answer.result, **_extra(kind, answer.result))

    async def _pod_failed(self, kind: type[R], command: Command, started: float) -> R | None:
        runners, settings = self._runners, self._settings
        pod = await runners.get_pod(self.name)
        verdict = pods.failure(pod, self.name)
        if verdict is None:
            waited = time.monotonic() - self._started_at
            if pod is not None and not pods.started(pod) and waited > settings.runner_start_timeout_seconds:
                await self._client.delete(PODS, self.name, runners.namespace)
                verdict = Reason.RUNNER_FAILED, pods.not_started(pod, self.name, waited)
            else:
                return None
        # Say so only once the pod has stopped: until then it may still be writing the state.
        self._unsafe = not await runners.until_terminated(self.name)
        late = await self._answered(kind, command)  # it may have answered just before it ended
        if late is not None:
            return late
        return _failed(kind, command.operation, verdict[0], verdict[1], time.monotonic() - started)


def _extra(kind: type[RunResult], result: RunResult) -> dict[str, Any]:
    """The typed fields of ``result`` that ``kind`` has (a decoded answer is already typed)."""
    if kind is ShownPlan and isinstance(result, ShownPlan):
        return {"plan": result.plan, "summary": result.summary, "digest": result.digest}
    if kind is Outputs and isinstance(result, Outputs):
        return {"values": result.values}
    return {}
