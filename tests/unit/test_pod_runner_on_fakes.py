"""The pod runner's operator side on the fake API server, against a fake node that plays kubelet and
``blacktop runner``: each operation a command and an answer, a pod that dies or never starts, a
leftover of an earlier process waited for, a shutdown that leaves a working pod alone. The real node
proves the same in tests/e2e/test_pod_runner.py; these run in a second."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blacktop.api.conditions import Reason
from blacktop.config import Settings
from blacktop.runners import pod_runner, pods
from blacktop.runners.exchange import Answer, Command, decode_answer, encode_answer
from blacktop.terraform.runner import Outputs, PlanResult, RunIdentity, RunResult, RunTarget, ShownPlan
from blacktop.terraform.state import state_of
from fakes import REPO, Clock, FakeClient

pytestmark = pytest.mark.unit

NS = "blacktop-system"
PODS, SECRETS, ACCOUNTS = pod_runner.PODS, pod_runner.SECRETS, pod_runner.ACCOUNTS
DIGEST = "d" * 64
JSON = dict[str, Any]


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pod_runner, "_FIRST_POLL", 0.01)
    monkeypatch.setattr(pod_runner, "_MAX_POLL", 0.02)
    monkeypatch.setattr(pod_runner, "_POD_EVERY", 0.02)


@contextlib.asynccontextmanager
async def slot(stage: str) -> AsyncIterator[None]:
    yield


class FakeNode:
    """Starts the runner pods it finds and answers their commands like ``blacktop runner`` would."""

    def __init__(self, client: FakeClient, *, start: bool = True) -> None:
        self.client = client
        self.start = start
        self.hold: set[str] = set()  # operations not answered (yet)
        self.dies: dict[str, JSON] = {}  # operation -> the pod status it ends with instead of answering
        self.commands: list[Command] = []

    async def serve(self) -> None:
        while True:
            for pod in await self.client.list(PODS, NS):
                await self._step(pod)
            await asyncio.sleep(0.005)

    async def _status(self, name: str, status: JSON) -> None:
        with contextlib.suppress(Exception):
            await self.client.merge_patch(PODS, name, {"status": status}, NS)

    async def _step(self, pod: JSON) -> None:
        name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
        if phase in {"Succeeded", "Failed"}:
            return
        if not self.start:
            await self._status(
                name,
                {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
            )
            return
        if phase is None:
            await self._status(name, {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]})
        exchange = self.client.stored(SECRETS, name, NS)
        data = (exchange or {}).get("data")
        command, answer = Command.decode(data), decode_answer(data)
        if command is None or (answer is not None and answer.seq >= command.seq):
            return
        if command.operation in self.dies:
            await self._status(name, self.dies[command.operation])
            return
        if command.operation in self.hold:
            return
        self.commands.append(command)
        result = _result(command)
        await self.client.merge_patch(
            SECRETS, name, {"data": {"result": encode_answer(Answer(command.seq, result))}}, NS
        )
        if command.operation == "exit":
            await self._status(
                name, {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}]}
            )


def _result(command: Command) -> RunResult:
    operation = command.operation
    if operation == "plan":
        return PlanResult("plan", 2, "", "", 0.1, ok_codes=(0, 2))
    if operation == "show":
        plan = {"resource_changes": [{"address": "terraform_data.service", "change": {"actions": ["create"]}}]}
        return ShownPlan("show", 0, "", "", 0.1, plan=plan, digest=DIGEST)
    if operation == "output":
        return Outputs("output", 0, "", "", 0.1, values={"endpoint": ("tiny://x", False)})
    return RunResult(operation, 0, "", "", 0.1)


def world(**settings: Any) -> tuple[FakeClient, pod_runner.PodRunners, RunTarget]:
    clock = Clock()
    client = FakeClient(clock)
    values: dict[str, Any] = {"runner": "pod", "runner_image": "example.com/blacktop:1", "namespace": NS, **settings}
    runners = pod_runner.PodRunners(client, Settings(**values), clock=clock)
    target = RunTarget(
        name="payments-dev-db-0f6c2a44",
        module=REPO / "terraform-modules" / "tiny",
        root=REPO / "terraform-modules",
        variables={"name": "db"},
        credentials={},
        state=state_of(NS, "0f6c2a44-uid"),
        request="payments-dev/db",
    )
    return client, runners, target


async def with_node(node: FakeNode, body: Any) -> Any:
    serving = asyncio.create_task(node.serve())
    try:
        return await asyncio.wait_for(body, timeout=20)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


RUN = RunIdentity(id="aaaaaaaaaaaa", lock_id="lock-a", operation="apply")


def test_each_operation_is_a_command_answered_by_the_pod_and_a_good_run_leaves_nothing() -> None:
    client, runners, target = world()
    node = FakeNode(client)

    async def scenario() -> None:
        runner = await runners.open(target, slot, RUN)
        assert (await runner.init()).ok
        assert (await runner.plan()).changes
        shown = await runner.show_plan()
        assert (shown.digest, shown.summary.add) == (DIGEST, 1)
        assert (await runner.apply_plan()).ok
        assert (await runner.outputs()).values == {"endpoint": ("tiny://x", False)}
        assert await runner.close("succeeded") is False

    asyncio.run(with_node(node, scenario()))
    assert [c.operation for c in node.commands] == ["init", "plan", "show", "apply", "output", "exit"]
    assert [c.digest for c in node.commands if c.operation == "apply"] == [DIGEST]  # the plan shown is the plan applied
    name = pods.run_name(RUN)
    assert client.stored(ACCOUNTS, name, NS) is None  # and with it, in a real cluster, everything it owns
    assert client.stored(SECRETS, name, NS) is None
    assert client.stored(SECRETS, f"{name}-inputs", NS) is None
    assert runners.active == set()


def test_a_pod_that_dies_mid_operation_is_classified_and_kept_for_its_logs() -> None:
    client, runners, target = world()
    node = FakeNode(client)
    node.dies["apply"] = {
        "phase": "Failed",
        "containerStatuses": [{"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}],
    }

    async def scenario() -> RunResult:
        runner = await runners.open(target, slot, RUN)
        await runner.init()
        await runner.plan()
        await runner.show_plan()
        applied = await runner.apply_plan()
        assert await runner.close("failed") is False
        return applied

    applied = asyncio.run(with_node(node, scenario()))
    assert (applied.ok, applied.reason) == (False, Reason.RUNNER_OUT_OF_MEMORY)
    assert "ran out of memory" in applied.detail
    name = pods.run_name(RUN)
    kept = client.stored(PODS, name, NS)
    assert kept is not None
    assert kept["metadata"]["annotations"][pods.ANNOTATION_ENDING] == "failed"
    assert client.stored(ACCOUNTS, name, NS) is not None  # kept with it, until the sweep
    assert client.stored(SECRETS, name, NS) is None  # but no secret value stays behind


def test_a_pod_that_never_starts_fails_its_run_when_the_start_timeout_passes() -> None:
    client, runners, target = world(runner_start_timeout_seconds=0.2)
    node = FakeNode(client, start=False)

    async def scenario() -> RunResult:
        runner = await runners.open(target, slot, RUN)
        result = await runner.init()
        assert await runner.close("failed") is False
        return result

    result = asyncio.run(with_node(node, scenario()))
    assert result.reason == Reason.RUNNER_FAILED
    assert "did not start" in result.detail
    assert client.stored(PODS, pods.run_name(RUN), NS) is None  # deleted
    assert client.stored(ACCOUNTS, pods.run_name(RUN), NS) is None


def test_a_runner_an_earlier_process_left_is_waited_for_then_told_to_exit() -> None:
    client, runners, target = world()
    node = FakeNode(client)
    node.hold.add("apply")
    said: list[str] = []

    async def announce(words: str) -> None:
        said.append(words)

    async def scenario() -> None:
        runner = await runners.open(target, slot, RUN)
        for step in (runner.init, runner.plan, runner.show_plan):
            await step()
        dying = asyncio.create_task(runner.apply_plan())  # the process dies while its pod applies
        await asyncio.sleep(0.1)
        dying.cancel()
        assert await runner.close("cancelled") is True  # the pod works on: the run keeps its lock
        successor = pod_runner.PodRunners(client, runners.settings, clock=runners.clock)
        settling = asyncio.create_task(successor.settle(target, announce))
        await asyncio.sleep(0.2)
        assert not settling.done()  # it waits while the apply runs
        node.hold.clear()
        await settling

    asyncio.run(with_node(node, scenario()))
    assert len(said) == 1
    assert "waiting for runner pod blacktop-run-aaaaaaaaaaaa (run aaaaaaaaaaaa, apply)" in said[0]
    assert [c.operation for c in node.commands][-2:] == ["apply", "exit"]  # it finished its apply, then exited
    left = client.stored(PODS, pods.run_name(RUN), NS)
    assert left is not None
    assert left["metadata"]["annotations"][pods.ANNOTATION_ENDING] == "adopted"
    assert client.stored(SECRETS, pods.run_name(RUN), NS) is None


def test_a_run_whose_pod_ended_after_its_operator_died_loses_its_secrets_at_the_next_run() -> None:
    client, runners, target = world()
    node = FakeNode(client)

    async def scenario() -> None:
        runner = await runners.open(target, slot, RUN)
        await runner.init()
        await runner._runners.send(runner.name, Command(2, "exit"))  # it exits; its operator is gone
        await asyncio.sleep(0.1)
        successor = pod_runner.PodRunners(client, runners.settings, clock=runners.clock)
        await successor.settle(target, announce=_never)

    asyncio.run(with_node(node, scenario()))
    assert client.stored(SECRETS, pods.run_name(RUN), NS) is None
    assert client.stored(SECRETS, f"{pods.run_name(RUN)}-inputs", NS) is None


async def _never(words: str) -> None:
    raise AssertionError(f"nothing to wait for, yet: {words}")


def test_the_module_travels_with_the_run() -> None:
    client, runners, target = world()
    node = FakeNode(client)

    async def scenario() -> None:
        runner = await runners.open(target, slot, RUN)
        await runner.init()

    asyncio.run(with_node(node, scenario()))
    inputs = client.stored(SECRETS, f"{pods.run_name(RUN)}-inputs", NS)
    assert inputs is not None
    files = pods.unbundle(base64.b64decode(inputs["data"][pods.MODULE_KEY]))
    assert files["main.tf"] == (REPO / "terraform-modules" / "tiny" / "main.tf").read_bytes()
