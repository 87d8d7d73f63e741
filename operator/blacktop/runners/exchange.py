"""The wire format between the operator and a runner pod: commands in, results out, through one Secret.

Each run in pod mode has an exchange Secret (named like the run's pod) in the operator's namespace.
The operator writes ``command``: JSON with a sequence number, the operation (``init``, ``plan``,
``show``, ``apply``, ``output``, ``destroy``, or ``exit``) and, for ``apply``, the digest of the
saved plan it was shown. The pod answers in ``result``: gzip'd JSON with the sequence number it
answers, the operation's :class:`~blacktop.terraform.runner.RunResult` (redacted output tails, exit
code, classification) and what the operation returns (the plan document and its digest, the
outputs). Each side merge-patches its own key only, so neither overwrites the other.

Results carry secret values (outputs, the plan's attribute values). They live only in this Secret,
which only the operator and that pod's own ServiceAccount may read, and the operator deletes it as
soon as the run ends. Pure: encoding, decoding and the bounds (a Secret holds at most 1 MiB).
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, fields
from typing import Any

from blacktop.api.servicerequest import PlanSummary
from blacktop.terraform.errors import Classification
from blacktop.terraform.plan import summarise
from blacktop.terraform.runner import Outputs, PlanResult, RunResult, ShownPlan

JSON = dict[str, Any]
COMMAND, RESULT = "command", "result"
OPERATIONS = frozenset({"init", "plan", "show", "apply", "output", "destroy", "exit"})
# A Secret holds 1 MiB; the result is most of it (a plan of thousands of resources compresses well).
MAX_RESULT_BYTES = 900 * 1024
# Output kept per stream: the tail is what status shows; the rest stays in the pod's log.
MAX_STDERR, MAX_STDOUT = 32 * 1024, 16 * 1024


class ResultTooLargeError(ValueError):
    """A result that does not fit into the exchange Secret."""


@dataclass(frozen=True)
class Command:
    """One instruction to the runner pod."""

    seq: int
    operation: str
    digest: str | None = None  # apply: the sha256 of the saved plan the operator was shown

    def encode(self) -> str:
        """The ``command`` value of the exchange Secret's data (base64)."""
        body: JSON = {"seq": self.seq, "operation": self.operation}
        if self.digest:
            body["digest"] = self.digest
        return base64.b64encode(json.dumps(body).encode()).decode()

    @classmethod
    def decode(cls, data: JSON | None) -> Command | None:
        """The command in an exchange Secret's ``data``, if any (an unknown operation is ignored)."""
        raw = (data or {}).get(COMMAND)
        if not raw:
            return None
        body = json.loads(base64.b64decode(raw))
        if body.get("operation") not in OPERATIONS:
            return None
        return cls(seq=int(body["seq"]), operation=str(body["operation"]), digest=body.get("digest"))


@dataclass(frozen=True)
class Answer:
    """The pod's answer to one command."""

    seq: int
    result: RunResult
    terminated: bool = False  # the pod was told to stop (SIGTERM) while the operation ran
    state_saved: bool = True  # the state the operation wrote reached the state Secret


def _tail(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[-limit:].decode(errors="ignore")


def encode_answer(answer: Answer) -> str:
    """The ``result`` value of the exchange Secret's data; raises ResultTooLargeError when it does not fit."""
    result = answer.result
    base = {f.name: getattr(result, f.name) for f in fields(RunResult) if f.name != "classification"}
    base["stdout"] = _tail(result.stdout, MAX_STDOUT)
    base["stderr"] = _tail(result.stderr, MAX_STDERR)
    base["ok_codes"] = list(result.ok_codes)
    body: JSON = {"seq": answer.seq, "terminated": answer.terminated, "stateSaved": answer.state_saved, "result": base}
    if result.classification is not None:
        body["classification"] = {
            "reason": result.classification.reason,
            "lockId": result.classification.lock_id,
            "lockHolder": result.classification.lock_holder,
        }
    if isinstance(result, ShownPlan):
        body["plan"], body["digest"] = result.plan, result.digest
    if isinstance(result, PlanResult):  # the counts came with the plan (plan -json): no show needed for them
        body["summary"] = result.summary.model_dump(mode="json")
    if isinstance(result, Outputs):
        body["outputs"] = {name: [value, sensitive] for name, (value, sensitive) in result.values.items()}
    packed = gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)
    if len(packed) > MAX_RESULT_BYTES:
        raise ResultTooLargeError(
            f"the {result.operation} result is {len(packed) // 1024} KiB compressed; a runner hands back at most "
            f"{MAX_RESULT_BYTES // 1024} KiB (a plan or outputs this large need the local runner)"
        )
    return base64.b64encode(packed).decode()


def decode_answer(data: JSON | None) -> Answer | None:
    """The answer in an exchange Secret's ``data``, typed like the runner's results, if any."""
    raw = (data or {}).get(RESULT)
    if not raw:
        return None
    body = json.loads(gzip.decompress(base64.b64decode(raw)))
    base = dict(body["result"])
    base["ok_codes"] = tuple(base.get("ok_codes") or (0,))
    found = body.get("classification")
    classification = Classification(found["reason"], found.get("lockId"), found.get("lockHolder")) if found else None
    result: RunResult
    if "plan" in body:
        plan = body["plan"] or {}
        result = ShownPlan(**base, plan=plan, summary=summarise(plan), digest=body.get("digest") or "")
    elif "outputs" in body:
        values = {name: (pair[0], bool(pair[1])) for name, pair in (body["outputs"] or {}).items()}
        result = Outputs(**base, values=values)
    elif base.get("operation") == "plan":
        result = PlanResult(**base, summary=PlanSummary.model_validate(body.get("summary") or {}))
    else:
        result = RunResult(**base)
    result.classification = classification
    return Answer(
        seq=int(body["seq"]),
        result=result,
        terminated=bool(body.get("terminated")),
        state_saved=bool(body.get("stateSaved", True)),
    )
