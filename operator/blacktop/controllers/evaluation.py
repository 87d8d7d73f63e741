"""Guardrail evaluation off the event loop: in worker processes, under a deadline, failing closed.

The CEL runtime holds the GIL while it evaluates, so one expensive rule (``all()`` nested over
``split()`` of a large parameter) once stalled the whole operator for half a minute: webhook
reviews timed out, liveness probes failed. Rules therefore run in separate processes
(``python -m blacktop.controllers.evaluation``), each reading one request per line on stdin and
answering with a line per rule it starts (``rule<TAB>policy<TAB>rule``) and a line with the decision.
The operator waits for the decision under a deadline (``Settings.guardrail_timeout_seconds``); when
it passes, or the worker dies, the worker is killed (a fresh one takes its place) and the decision
is a denial naming the rule that was still running. A small pool (``Settings.guardrail_workers``)
serves concurrent reviews; a review that finds no worker free within the deadline is denied too.
The estimated cost limit checked when a policy is applied keeps this path for policies that got in
some other way (before the webhook ran, or with a raised limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from blacktop.api.guardrailpolicy import GuardrailPolicySpec, RuleStage
from blacktop.guardrails import engine

logger = logging.getLogger(__name__)

_LINE_LIMIT = 64 * 1024 * 1024  # a decision's line; requests carry plans, answers carry messages
_SPAWN_SECONDS = 30.0


class _Worker:
    """One evaluation process and the rule it last said it started."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.running: tuple[str, str] | None = None

    @classmethod
    async def spawn(cls) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "blacktop.controllers.evaluation",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def ask(self, payload: bytes) -> engine.Decision | str:
        """The decision, or why there is none (the worker's error line, or its death)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.running = None
        self.proc.stdin.write(payload)
        await self.proc.stdin.drain()
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return "the evaluation process exited"
            kind, _, rest = line.rstrip(b"\n").partition(b"\t")
            if kind == b"rule":
                policy, _, rule = rest.decode().partition("\t")
                self.running = (policy, rule)
            elif kind == b"decision":
                return engine.decision_from_json(rest.decode())
            else:
                return rest.decode() or "the evaluation process answered nonsense"

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            await self.proc.wait()


class Evaluator:
    """Evaluates guardrail decisions in a pool of worker processes (``inline``: in this process, for tests)."""

    def __init__(self, *, workers: int, timeout: float, inline: bool = False) -> None:
        self.size = max(1, workers)
        self.timeout = timeout
        self.inline = inline
        self._idle: asyncio.Queue[_Worker | None] | None = None

    def _pool(self) -> asyncio.Queue[_Worker | None]:
        if self._idle is None:
            # A None slot is a worker not started yet (or killed): whoever takes it spawns one.
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(None)
        return self._idle

    async def start(self) -> None:
        """Start the workers now, so the first review does not pay for starting Python."""
        if self.inline:
            return
        pool = self._pool()
        slots = [pool.get_nowait() for _ in range(pool.qsize())]
        for slot in slots:
            pool.put_nowait(slot if slot is not None and slot.alive else await _Worker.spawn())

    async def close(self) -> None:
        """Stop every idle worker (busy ones are killed by their own deadline or finish)."""
        pool = self._idle
        while pool is not None and not pool.empty():
            worker = pool.get_nowait()
            if worker is not None:
                await worker.kill()

    async def evaluate(
        self,
        policies: Sequence[engine.CompiledPolicy],
        subject: engine.Subject,
        variables: Mapping[str, Any],
        stage: RuleStage,
    ) -> engine.Decision:
        """The decision of the policies' rules of ``stage``, or a denial naming the rule that ran out of time."""
        relevant = engine.relevant(policies, subject, stage)
        if not relevant:
            return engine.Decision()
        if self.inline:
            return engine.evaluate(relevant, subject, variables, stage)
        first = next(r for r in sorted(relevant, key=lambda p: p.name)[0].rules if r.stage is stage)
        sources = [{"name": p.name, "source": p.source} for p in relevant]
        payload = json.dumps(
            {"stage": stage.value, "subject": asdict(subject), "variables": variables, "policies": sources},
            default=str,
        ).encode()
        started = time.monotonic()
        pool = self._pool()
        try:
            slot = await asyncio.wait_for(pool.get(), self.timeout)
        except TimeoutError:
            why = f"no guardrail evaluation process was free within {self.timeout:g}s"
            return engine.unfinished(relevant[0].name, first.name, stage, why)
        worker, settled = slot, False
        try:
            if worker is None or not worker.alive:
                worker = await asyncio.wait_for(_Worker.spawn(), _SPAWN_SECONDS)
            remaining = max(0.05, self.timeout - (time.monotonic() - started))
            try:
                answer = await asyncio.wait_for(worker.ask(payload + b"\n"), remaining)
            except TimeoutError:
                answer = f"the rule did not finish within {self.timeout:g}s"
            if isinstance(answer, engine.Decision):
                settled = True
                return answer
            policy, rule = worker.running or (relevant[0].name, first.name)
            logger.warning("guardrail evaluation failed at GuardrailPolicy %s/%s: %s", policy, rule, answer)
            return engine.unfinished(policy, rule, stage, answer)
        finally:
            if not settled and worker is not None:
                # Timed out, failed or cancelled midway: its pipe may still carry this request's lines.
                await asyncio.shield(worker.kill())
                worker = None  # the next user of this slot starts a fresh process
            pool.put_nowait(worker)


def _die_with_parent() -> None:
    """SIGTERM this worker when the operator dies, even by SIGKILL: a rule still running must not outlive it."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _serve() -> None:
    """The worker: one JSON request per line on stdin, progress and the decision on stdout."""
    _die_with_parent()
    cache: dict[tuple[str, str], engine.CompiledPolicy] = {}
    out = sys.stdout.buffer

    def progress(policy: str, rule: str) -> None:
        out.write(f"rule\t{policy}\t{rule}\n".encode())
        out.flush()

    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            policies = []
            for item in request["policies"]:
                key = (item["name"], item["source"])
                if key not in cache:
                    if len(cache) > 512:
                        cache.clear()
                    cache[key] = engine.compile_policy(key[0], GuardrailPolicySpec.model_validate_json(key[1]))
                policies.append(cache[key])
            subject = engine.Subject(**request["subject"])
            stage = RuleStage(request["stage"])
            decision = engine.evaluate(policies, subject, request["variables"], stage, progress=progress)
            out.write(b"decision\t" + engine.decision_to_json(decision).encode() + b"\n")
        except Exception as exc:  # one bad request must not end the worker; the operator fails closed
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            out.write(f"error\tthe rule could not be evaluated ({text})\n".encode())
        out.flush()


if __name__ == "__main__":
    _serve()
