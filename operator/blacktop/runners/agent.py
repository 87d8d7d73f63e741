"""The runner pod's side of a run: ``blacktop runner``, the command a runner pod's container runs.

It unpacks the module and variables the operator put into the run's inputs Secret into a workspace
on the pod's emptyDir, reads the request's state from its state Secret, and then does what the
exchange Secret's commands say (:mod:`blacktop.runners.exchange`), one at a time, with the same
:class:`~blacktop.terraform.subprocess_runner.SubprocessRunner` the local runner uses: the same
command lines, timeouts, redaction and classification. It answers each command in the exchange
Secret and exits on ``exit`` (or after ``IDLE_SECONDS`` without a command, or when the exchange
Secret is gone).

The state: OpenTofu's ``kubernetes`` backend would list every Secret of the namespace on ``init``
(to find workspaces), which the run's ServiceAccount may not. So the tool uses a local state file,
and the runner keeps it in step with the state Secret in the backend's own format (gzip'd JSON in
``data.tfstate``): read before the first operation; written while ``apply``/``destroy`` run (every
few seconds, when it changed), when they end, and after SIGTERM once the tool has stopped. Before
every write it checks that the state's lock Lease still names this run's lock ID (Blacktop took the
lock for the run; a runner that lost it writes nothing).

Credentials arrive as environment variables of this container only; the tool gets them, its output
is redacted with their values before it leaves the pod. The only token here is the run's own
ServiceAccount token (at :data:`~blacktop.runners.pods.TOKEN_DIR`), good for its two Secrets and
its Lease. The API client is a few lines of urllib on purpose: no Kubernetes client to import, so a
runner pod is ready seconds sooner.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blacktop.api.conditions import Reason
from blacktop.runners import pods
from blacktop.runners.exchange import Answer, Command, ResultTooLargeError, decode_answer, encode_answer
from blacktop.terraform import workspace
from blacktop.terraform.errors import Classification
from blacktop.terraform.redact import Redactor, tail
from blacktop.terraform.runner import RunResult
from blacktop.terraform.subprocess_runner import SubprocessRunner
from blacktop.toolbox import cache_dir, find_tool

logger = logging.getLogger("blacktop.runner")

JSON = dict[str, Any]
IDLE_SECONDS = 300.0  # no command for this long: the operator is gone; the next one adopts nothing
SAVE_EVERY = 5.0  # how often the state is saved while apply/destroy run
_WRITES = frozenset({"apply", "destroy"})
_API_PATIENCE = 60.0  # how long an API call is retried through connection errors and 5xx
TERMINATION_LOG = Path("/dev/termination-log")
# Where the container's cgroup counts OOM kills (cgroup v2, then v1): the kernel may kill the tool
# or a provider rather than this process, and then only the counter tells why it died.
_OOM_COUNTERS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))


def oom_kills(counters: tuple[Path, ...] = _OOM_COUNTERS) -> int | None:
    """How many processes of this container the kernel has OOM-killed so far (None: not known)."""
    for path in counters:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


class ApiError(RuntimeError):
    """The API server refused a call (not a transient failure)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Api:
    """Just enough of the Kubernetes API: get and merge-patch one object, with the run's own token."""

    def __init__(self, server: str, token_file: Path, ca_file: Path) -> None:
        self.server = server.rstrip("/")
        self.token_file = token_file
        self.tls = ssl.create_default_context(cafile=str(ca_file))

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str] = os.environ) -> Api:
        host, port = environ["KUBERNETES_SERVICE_HOST"], environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        token_dir = Path(environ.get("BLACKTOP_RUN_TOKEN_DIR", pods.TOKEN_DIR))
        return cls(f"https://{host}:{port}", token_dir / "token", token_dir / "ca.crt")

    def _once(self, method: str, path: str, body: JSON | None) -> JSON | None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.server}{path}", data=data, method=method)  # noqa: S310 (https only)
        request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")  # renewed by kubelet
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/merge-patch+json")
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=30) as response:  # noqa: S310
                answer: JSON = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ApiError(exc.code, exc.read()[:300].decode(errors="replace")) from None

    def call(self, method: str, path: str, body: JSON | None = None) -> JSON | None:
        """One call, retried through connection errors, 429 and 5xx; None when the object does not exist."""
        deadline, delay = time.monotonic() + _API_PATIENCE, 0.5
        while True:
            try:
                return self._once(method, path, body)
            except ApiError as exc:
                if (exc.status != 429 and exc.status < 500) or time.monotonic() > deadline:
                    raise
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(5.0, delay * 2)


@dataclass(frozen=True)
class Config:
    """What the operator told this pod (environment variables it set: see pods.pod)."""

    namespace: str
    exchange: str
    state_secret: str
    lock_lease: str
    lock_id: str
    timeout: float
    grace: float
    credentials: tuple[str, ...]
    binary: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        return cls(
            namespace=environ["BLACKTOP_RUN_NAMESPACE"],
            exchange=environ["BLACKTOP_RUN_EXCHANGE"],
            state_secret=environ["BLACKTOP_RUN_STATE_SECRET"],
            lock_lease=environ["BLACKTOP_RUN_LOCK_LEASE"],
            lock_id=environ["BLACKTOP_RUN_LOCK_ID"],
            timeout=float(environ.get("BLACKTOP_RUN_TIMEOUT_SECONDS", "1800")),
            grace=float(environ.get("BLACKTOP_RUN_GRACE_SECONDS", "15")),
            credentials=tuple(k for k in environ.get("BLACKTOP_RUN_CREDENTIALS", "").split(",") if k),
            binary=environ.get("BLACKTOP_TERRAFORM_BINARY", "tofu"),
        )


@contextlib.asynccontextmanager
async def _no_slot(stage: str) -> AsyncIterator[None]:
    yield  # the pod is the run's slot: the operator took it before it started the pod


class Agent:
    """One run's commands, in order (see the module docstring)."""

    def __init__(self, config: Config, api: Api, *, work: Path, inputs: Path, environ: Mapping[str, str]) -> None:
        self.config = config
        self.api = api
        self.work = work
        self.inputs = inputs
        self.credentials = {k: environ[k] for k in config.credentials if k in environ}
        redact_file = inputs / pods.REDACT_KEY
        passed = json.loads(redact_file.read_text()) if redact_file.is_file() else []
        # Credentials by name (a user name is masked as a value, a password wherever it stands), the
        # other requests' outputs it was given as secrets.
        self.redact = Redactor.of(self.credentials, (str(v) for v in passed))
        self.workdir = work / "workspace"
        self.saved: bytes | None = None  # the state as the state Secret has it
        self._save_lock = asyncio.Lock()
        self._stopping = False
        self._operating: asyncio.Task[RunResult] | None = None  # the tool's operation, while it runs

    # -- paths of the objects it touches --------------------------------------------------------

    def _secret(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.config.namespace}/secrets/{name}"

    def _lease(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.config.namespace}/leases/{self.config.lock_lease}"

    async def _call(self, method: str, path: str, body: JSON | None = None) -> JSON | None:
        return await asyncio.to_thread(self.api.call, method, path, body)

    # -- the run ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM (pod deleted, evicted, past its deadline): stop the operation, save the state, exit."""
        self._stopping = True
        if self._operating is not None:
            self._operating.cancel()  # the runner stops the tool (SIGTERM, SIGKILL after the grace)

    async def serve(self) -> int:
        await asyncio.to_thread(self._prepare)
        await self._load_state()
        env = workspace.environment(cache_dir() / "tofu.tfrc", self.credentials)
        runner = SubprocessRunner(
            binary=str(find_tool(self.config.binary)),
            workdir=self.workdir,
            env=env,
            timeout=self.config.timeout,
            grace=self.config.grace,
            slot=_no_slot,
            redact=self.redact,
        )
        done = 0
        while not self._stopping:
            command = await self._next_command(done)
            if command is None:
                break
            if command.operation == "exit":
                await self._answer(Answer(command.seq, RunResult("exit", 0, "", "", 0.0)))
                return 0
            answer = await self._execute(runner, command)
            await self._answer(answer)
            done = command.seq
        return 143 if self._stopping else 0

    def _prepare(self) -> None:
        files = pods.unbundle((self.inputs / pods.MODULE_KEY).read_bytes())
        module = self.work / "module"
        for rel, data in files.items():
            target = module / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        variables = json.loads((self.inputs / pods.VARIABLES_KEY).read_text())
        workspace.prepare(self.work, self.workdir.name, module, variables, workspace.LocalBackend())

    async def _next_command(self, done: int) -> Command | None:
        """The next command after ``done``; None when there is none to wait for (idle, stopping, gone)."""
        begun = time.monotonic()
        idle_until = begun + IDLE_SECONDS
        while not self._stopping and time.monotonic() < idle_until:
            exchange = await self._call("GET", self._secret(self.config.exchange))
            if exchange is None:
                logger.info("the exchange Secret is gone: the run is over")
                return None
            command = Command.decode(exchange.get("data"))
            if command is not None and command.seq > done:
                return command
            # The next command usually follows at once; later the operator is judging or gone.
            await asyncio.sleep(0.1 if time.monotonic() - begun < 3 else 0.5)
        if not self._stopping:
            logger.info("no command for %.0fs: exiting", IDLE_SECONDS)
        return None

    async def _execute(self, runner: SubprocessRunner, command: Command) -> Answer:
        operation, started = command.operation, time.monotonic()
        finished = asyncio.Event()
        saving = asyncio.ensure_future(self._keep_saved(finished)) if operation in _WRITES else None
        terminated = False
        killed_before = oom_kills()
        self._operating = asyncio.ensure_future(self._operation(runner, command))
        try:
            result = await self._operating
        except asyncio.CancelledError:  # SIGTERM: the tool was stopped (SIGTERM, then SIGKILL after the grace)
            terminated = True
            result = RunResult(
                operation,
                -1,
                "",
                f"the runner was stopped during {operation}",
                time.monotonic() - started,
                classification=Classification(Reason.RUNNER_FAILED),
            )
        finally:
            self._operating = None
            finished.set()
            if saving is not None:
                await saving  # a save in flight lands before the last one (never an older state after a newer)
        killed_after = oom_kills()
        if not result.ok and killed_before is not None and killed_after is not None and killed_after > killed_before:
            result.stderr = f"the tool was killed: the runner pod ran out of memory (OOMKilled)\n{result.stderr}"
            result.classification = Classification(Reason.RUNNER_OUT_OF_MEMORY)
        saved = True
        if operation in _WRITES:
            saved, problem = await self._save_state()
            if not saved:
                result.stderr = f"{problem}\n{result.stderr}"
                result.classification = Classification(Reason.RUNNER_FAILED)
                result.exit_code = result.exit_code or 1
        if operation not in {"show", "output"}:  # their stdout is data (sent apart), not words
            result.stdout = self.redact(result.stdout)
        else:
            result.stdout = ""
        code = "timed out" if result.timed_out else f"exit {result.exit_code}"
        logger.info("%s: %s in %.1fs", operation, code, result.seconds)
        if not result.ok:
            logger.info("%s failed:\n%s", operation, tail(result.stderr or result.stdout))
        return Answer(command.seq, result, terminated=terminated, state_saved=saved)

    async def _operation(self, runner: SubprocessRunner, command: Command) -> RunResult:
        match command.operation:
            case "init":
                return await runner.init()
            case "plan":
                return await runner.plan()
            case "show":
                return await runner.show_plan()
            case "apply":
                return await runner.apply_plan(digest=command.digest)
            case "output":
                return await runner.outputs()
            case "destroy":
                return await runner.destroy()
        raise ValueError(f"unknown operation {command.operation!r}")

    async def _answer(self, answer: Answer) -> None:
        try:
            value = encode_answer(answer)
        except ResultTooLargeError as exc:
            reason = Reason.PLAN_FAILED if answer.result.operation == "show" else Reason.RUNNER_FAILED
            small = RunResult(answer.result.operation, 1, "", str(exc), answer.result.seconds)
            small.classification = Classification(reason)
            value = encode_answer(Answer(answer.seq, small, answer.terminated, answer.state_saved))
        patched = await self._call("PATCH", self._secret(self.config.exchange), {"data": {"result": value}})
        if patched is None:
            logger.info("the exchange Secret is gone: the answer to %s has nobody to read it", answer.result.operation)
        elif decode_answer(patched.get("data")) is None:
            raise RuntimeError("the answer did not reach the exchange Secret")

    # -- the state ----------------------------------------------------------------------------------

    async def _load_state(self) -> None:
        secret = await self._call("GET", self._secret(self.config.state_secret))
        raw = ((secret or {}).get("data") or {}).get("tfstate")
        if not raw:
            return  # a first run: the tool starts from no state
        state = gzip.decompress(base64.b64decode(raw))
        (self.workdir / workspace.STATE_FILE).write_bytes(state)
        self.saved = state

    async def _keep_saved(self, finished: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), SAVE_EVERY)
            if finished.is_set():
                return
            saved, problem = await self._save_state()
            if not saved:
                logger.warning("could not save the state yet: %s", problem)

    async def _save_state(self) -> tuple[bool, str]:
        """Write the state file into the state Secret if it changed; (whether it is saved, why not)."""
        async with self._save_lock:
            path = self.workdir / workspace.STATE_FILE
            for _ in range(20):  # the tool may be writing it right now: wait for a complete file
                state = path.read_bytes() if path.is_file() else None
                if state is None or state == self.saved:
                    return True, ""
                try:
                    json.loads(state)
                    break
                except ValueError:
                    await asyncio.sleep(0.1)
            else:
                return False, "the state file stayed unreadable"
            try:
                lease = await self._call("GET", self._lease())
                holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
                if holder != self.config.lock_id:
                    return False, (
                        f"the state was not saved: its lock is no longer this run's ({self.config.lock_id}) but "
                        f"{holder or 'nobody'}'s"
                    )
                packed = base64.b64encode(gzip.compress(state)).decode()
                body = {"metadata": {"annotations": {"encoding": "gzip"}}, "data": {"tfstate": packed}}
                if await self._call("PATCH", self._secret(self.config.state_secret), body) is None:
                    return False, "the state was not saved: the state Secret is gone"
            except (ApiError, OSError) as exc:
                return False, f"the state was not saved: {exc}"
            self.saved = state
            return True, ""


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Entry point of ``blacktop runner``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    config = Config.from_env(environ)
    agent = Agent(
        config,
        Api.in_cluster(environ),
        work=Path(environ.get("BLACKTOP_RUN_WORK_DIR", pods.WORK_DIR)),
        inputs=Path(environ.get("BLACKTOP_RUN_INPUTS_DIR", pods.INPUTS_DIR)),
        environ=environ,
    )

    async def run() -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, agent.stop)
        return await agent.serve()

    try:
        return asyncio.run(run())
    except Exception as exc:
        words = agent.redact(f"{type(exc).__name__}: {exc}")
        logger.error("the runner failed: %s", words)
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(words[-2000:])  # kubelet puts it into the pod's status
        return 1
