"""The objects a run in pod mode is made of, what a runner pod's status means, and which leftovers go. Pure.

A run ``<id>`` (status.lastRun.id) gets, in the operator's namespace:

- a ServiceAccount ``blacktop-run-<id>`` (no token automounted anywhere), which owns everything else,
  so deleting it removes the run's objects in one call;
- a Role and RoleBinding that let that account ``get`` and ``patch`` two Secrets by name (the
  request's state Secret and the run's exchange Secret) and ``get`` the state's lock Lease (to check
  it still holds the lock before it writes state): nothing else, no list, no other name;
- the inputs Secret ``blacktop-run-<id>-inputs`` (the module's files, the variables and, when the
  golden path's credentials Secret is in another namespace, a copy of the credentials), mounted read-only;
- the exchange Secret ``blacktop-run-<id>`` (:mod:`blacktop.runners.exchange`);
- the Pod ``blacktop-run-<id>``: the runner image running ``blacktop runner``, the account's own
  projected token at a path of its own (the standard token path stays empty, the operator's token is
  never there), the credentials as environment variables of this container only, requests and
  limits from the golden path with the operator's defaults, ``activeDeadlineSeconds``, non-root,
  read-only root filesystem, no privilege escalation, every capability dropped, seccomp RuntimeDefault.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blacktop.api.common import parse_time
from blacktop.api.conditions import Reason
from blacktop.builders import naming
from blacktop.config import Settings
from blacktop.terraform.runner import RunIdentity, RunTarget

JSON = dict[str, Any]

COMPONENT = "runner"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_REQUEST = f"{naming.DOMAIN}/request-uid"
LABEL_RUN = f"{naming.DOMAIN}/run"
LABEL_OPERATION = f"{naming.DOMAIN}/operation"
ANNOTATION_REQUEST = f"{naming.DOMAIN}/request"
ANNOTATION_ENDING = f"{naming.DOMAIN}/run-ending"
ANNOTATION_FINISHED = f"{naming.DOMAIN}/finished-at"
RUNNER_SELECTOR = f"{LABEL_COMPONENT}={COMPONENT},{naming.MANAGED_BY}={naming.MANAGER}"

# Inside the pod (the agent reads the same constants).
INPUTS_DIR = "/var/run/blacktop/inputs"
# Not the standard path: a module looking there finds nothing.
TOKEN_DIR = "/var/run/blacktop/serviceaccount"  # noqa: S105 (a folder, not a password)
TMP = "/tmp"  # noqa: S108 (the pod's own emptyDir)
WORK_DIR = "/var/lib/blacktop"
MODULE_KEY, VARIABLES_KEY = "module.json.gz", "variables.json"
# Values redacted from everything the pod reports beside its credentials (inputs from other requests).
REDACT_KEY = "redact.json"
CREDENTIAL_PREFIX = "credential."
RUNNER_USER = 65532  # the image's user (hack/image/setup-base.sh)
# A module bundle bigger than this is refused (the inputs Secret holds 1 MiB with the variables).
MAX_MODULE_BYTES = 512 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kubernetes' own waiting reasons that will not go away by waiting.
_FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}


class ModuleTooLargeError(ValueError):
    """A module that cannot be handed to a runner pod."""


def run_name(run: RunIdentity) -> str:
    """The name of the run's ServiceAccount, Role, RoleBinding, exchange Secret and Pod."""
    return f"blacktop-run-{run.id}"


def inputs_name(run: RunIdentity) -> str:
    return f"{run_name(run)}-inputs"


def bundle(files: Mapping[str, bytes]) -> str:
    """The module's files (relative path -> content) as the inputs Secret's value (base64 of gzip'd JSON)."""
    body = {"files": {path: base64.b64encode(data).decode() for path, data in sorted(files.items())}}
    packed = gzip.compress(json.dumps(body).encode(), mtime=0)
    if len(packed) > MAX_MODULE_BYTES:
        raise ModuleTooLargeError(
            f"the module is {len(packed) // 1024} KiB compressed; a runner pod takes at most "
            f"{MAX_MODULE_BYTES // 1024} KiB (trim the module or use the local runner)"
        )
    return base64.b64encode(packed).decode()


def unbundle(value: bytes) -> dict[str, bytes]:
    """The files of a bundle (the file the Secret volume holds: gzip'd JSON); refuses paths leaving the folder."""
    body = json.loads(gzip.decompress(value))
    files: dict[str, bytes] = {}
    for path, data in body["files"].items():
        parts = path.split("/")
        if path.startswith("/") or any(part in {"", ".", ".."} for part in parts):
            raise ValueError(f"module bundle holds an unsafe path {path!r}")
        files[path] = base64.b64decode(data)
    return files


def _labels(target: RunTarget, run: RunIdentity) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "blacktop",
        LABEL_COMPONENT: COMPONENT,
        naming.MANAGED_BY: naming.MANAGER,
        LABEL_REQUEST: target.state.suffix,
        LABEL_RUN: run.id,
        LABEL_OPERATION: run.operation,
    }


def _meta(name: str, target: RunTarget, run: RunIdentity, owner: JSON | None = None) -> JSON:
    meta: JSON = {
        "name": name,
        "namespace": target.state.namespace,
        "labels": _labels(target, run),
        "annotations": {ANNOTATION_REQUEST: target.request},
    }
    if owner is not None:
        # Not a controller reference with blockOwnerDeletion: the operator may delete the account
        # without update rights on serviceaccounts/finalizers; the garbage collector follows it anyway.
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    return meta


def service_account(target: RunTarget, run: RunIdentity) -> JSON:
    """The run's own identity; its token is never mounted automatically."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(run_name(run), target, run),
        "automountServiceAccountToken": False,
    }


def role(target: RunTarget, run: RunIdentity, owner: JSON) -> JSON:
    """Exactly what the runner pod calls: its state Secret and exchange Secret by name, the lock Lease to read."""
    state = target.state
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(run_name(run), target, run, owner),
        "rules": [
            # Read the state before the first operation, write it back as an operation changes it;
            # read the next command, write each result.
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [state.state_secret, run_name(run)],
                "verbs": ["get", "patch"],
            },
            # Before each state write: is the lock still this run's? (Blacktop took it for the run.)
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [state.lock_lease],
                "verbs": ["get"],
            },
        ],
    }


def role_binding(target: RunTarget, run: RunIdentity, owner: JSON) -> JSON:
    name = run_name(run)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, target, run, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": target.state.namespace}],
    }


def credential_keys(target: RunTarget) -> list[str]:
    """The credentials that can be environment variables (a key like ``tls.crt`` cannot), sorted."""
    return sorted(key for key in target.credentials if _ENV_NAME.match(key))


def _copies_credentials(target: RunTarget) -> bool:
    """Credentials are referenced where they are when a pod can (the operator's namespace), else copied."""
    ref = target.credentials_secret
    return bool(target.credentials) and (ref is None or ref[0] != target.state.namespace)


def inputs_secret(target: RunTarget, run: RunIdentity, owner: JSON, module: str) -> JSON:
    """The run's inputs: the module bundle, the variables, and credentials the pod cannot reference."""
    data = {
        MODULE_KEY: module,
        VARIABLES_KEY: base64.b64encode(json.dumps(dict(target.variables), sort_keys=True).encode()).decode(),
        REDACT_KEY: base64.b64encode(json.dumps(list(target.secrets)).encode()).decode(),
    }
    if _copies_credentials(target):
        for key in credential_keys(target):
            data[CREDENTIAL_PREFIX + key] = base64.b64encode(target.credentials[key].encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(inputs_name(run), target, run, owner),
        "type": "Opaque",
        "immutable": True,
        "data": data,
    }


def exchange_secret(target: RunTarget, run: RunIdentity, owner: JSON, command: str) -> JSON:
    """The run's exchange Secret, created with its first command."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(run_name(run), target, run, owner),
        "type": "Opaque",
        "data": {"command": command},
    }


def _credential_env(target: RunTarget, run: RunIdentity) -> list[JSON]:
    if not target.credentials:
        return []
    if _copies_credentials(target):
        secret, prefix = inputs_name(run), CREDENTIAL_PREFIX
    else:
        assert target.credentials_secret is not None
        secret, prefix = target.credentials_secret[1], ""
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": prefix + key}}}
        for key in credential_keys(target)
    ]


_SUFFIXES = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2``) as a number; raises ValueError if it is none."""
    found = _QUANTITY.match(text.strip())
    if found is None or found.group(2) not in {"", *_SUFFIXES}:
        raise ValueError(f"not a quantity: {text!r}")
    return float(found.group(1)) * _SUFFIXES.get(found.group(2), 1.0)


def _resources(settings: Settings, target: RunTarget) -> JSON:
    """The golden path's requests and limits over the operator's defaults. A golden path that sets only
    a limit below the default request gets that limit as its request (Kubernetes refuses request > limit)."""
    requests = {"cpu": settings.runner_cpu_request, "memory": settings.runner_memory_request}
    limits = {"cpu": settings.runner_cpu_limit, "memory": settings.runner_memory_limit}
    own_requests = {k: v for k, v in target.runner.requests.items() if v}
    limits.update({k: v for k, v in target.runner.limits.items() if v})
    requests.update(own_requests)
    for what, limit in limits.items():
        if what not in own_requests and quantity(requests[what]) > quantity(limit):
            requests[what] = limit
    return {"requests": requests, "limits": limits}


def deadline_seconds(settings: Settings) -> int:
    """The pod's activeDeadlineSeconds: a whole run (init, plan, show, apply, output) within the run timeout
    per operation would be longer; the pod is bounded by two timeouts plus its start and grace."""
    return int(2 * settings.run_timeout_seconds + settings.runner_start_timeout_seconds + settings.run_grace_seconds)


def grace_seconds(settings: Settings) -> int:
    """terminationGracePeriodSeconds: the tool's own grace, and time to save the state afterwards."""
    return int(settings.run_grace_seconds) + 30


def runner_image(settings: Settings, target: RunTarget) -> str:
    """The image of the target's runner pods; raises ValueError when neither the golden path nor the
    operator names one."""
    image = target.runner.image or settings.runner_image
    if not image:
        raise ValueError("pod mode needs a runner image: set BLACKTOP_RUNNER_IMAGE or the golden path's runner.image")
    return image


def pod(settings: Settings, target: RunTarget, run: RunIdentity, owner: JSON) -> JSON:
    """The runner pod (see the module docstring)."""
    name = run_name(run)
    image = runner_image(settings, target)
    own = {
        "BLACKTOP_RUN_NAMESPACE": target.state.namespace,
        "BLACKTOP_RUN_EXCHANGE": name,
        "BLACKTOP_RUN_STATE_SECRET": target.state.state_secret,
        "BLACKTOP_RUN_LOCK_LEASE": target.state.lock_lease,
        "BLACKTOP_RUN_LOCK_ID": run.lock_id,
        "BLACKTOP_RUN_TIMEOUT_SECONDS": str(settings.run_timeout_seconds),
        "BLACKTOP_RUN_GRACE_SECONDS": str(settings.run_grace_seconds),
        "BLACKTOP_RUN_CREDENTIALS": ",".join(credential_keys(target)),
        "BLACKTOP_TERRAFORM_BINARY": settings.terraform_binary,
        "HOME": TMP,
        "TMPDIR": TMP,
    }
    # Credentials first: a later entry of the same name wins, so no credential can replace the runner's own.
    env = [*_credential_env(target, run), *({"name": k, "value": v} for k, v in own.items())]
    security = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    spec: JSON = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_seconds(settings),
        "terminationGracePeriodSeconds": grace_seconds(settings),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_USER,
            "runAsGroup": RUNNER_USER,
            "fsGroup": RUNNER_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "runner",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["runner"],
                "env": env,
                "resources": _resources(settings, target),
                "securityContext": security,
                "terminationMessagePolicy": "File",
                "volumeMounts": [
                    {"name": "work", "mountPath": WORK_DIR},
                    {"name": "tmp", "mountPath": TMP},
                    {"name": "inputs", "mountPath": INPUTS_DIR, "readOnly": True},
                    {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "work", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            {
                "name": "inputs",
                "secret": {
                    "secretName": inputs_name(run),
                    "defaultMode": 0o440,
                    "items": [
                        {"key": MODULE_KEY, "path": MODULE_KEY},
                        {"key": VARIABLES_KEY, "path": VARIABLES_KEY},
                        {"key": REDACT_KEY, "path": REDACT_KEY},
                    ],
                },
            },
            {
                "name": "token",
                "projected": {
                    "defaultMode": 0o440,
                    "sources": [
                        # kubelet renews it before it expires; the agent reads the file for every call.
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    ],
                },
            },
        ],
    }
    if settings.runner_image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in settings.runner_image_pull_secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, target, run, owner), "spec": spec}


# -- what a pod's status means ------------------------------------------------------------------


def terminated(pod: JSON | None) -> bool:
    """Whether nothing runs in the pod any more (gone, or Succeeded/Failed): it writes no state now."""
    if pod is None:
        return True
    return ((pod.get("status") or {}).get("phase")) in {"Succeeded", "Failed"}


def _container(pod: JSON) -> JSON:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def _limit(pod: JSON, what: str) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(((containers[0].get("resources") or {}).get("limits") or {}).get(what) or "none")


def failure(pod: JSON | None, name: str) -> tuple[str, str] | None:  # noqa: PLR0911 (one answer per case)
    """Why the runner pod ``name`` cannot answer any more (reason, message), or None while it can."""
    if pod is None:
        return Reason.RUNNER_EVICTED, f"runner pod {name} was deleted while it ran; the run is retried"
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return Reason.RUNNER_EVICTED, f"runner pod {name} was deleted while it ran; the run is retried"
    reason, message = status.get("reason") or "", status.get("message") or ""
    if reason == "Evicted":
        return (
            Reason.RUNNER_EVICTED,
            f"runner pod {name} was evicted ({message or 'node pressure'}); the run is retried",
        )
    if reason == "DeadlineExceeded":
        return Reason.TIMEOUT, f"runner pod {name} ran past its deadline ({pod['spec'].get('activeDeadlineSeconds')}s)"
    state = _container(pod).get("state") or {}
    ended = state.get("terminated")
    if ended is not None:
        if ended.get("reason") == "OOMKilled":
            return (
                Reason.RUNNER_OUT_OF_MEMORY,
                f"runner pod {name} ran out of memory (limit {_limit(pod, 'memory')}); raise the golden path's "
                "runner.resources.limits.memory",
            )
        words = (ended.get("message") or "").strip()[-500:] or f"exit code {ended.get('exitCode')}"
        return Reason.RUNNER_FAILED, f"runner pod {name} stopped without answering: {words}"
    if status.get("phase") in {"Succeeded", "Failed"}:
        return Reason.RUNNER_FAILED, f"runner pod {name} ended ({status.get('phase')}) without answering"
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in _FATAL_WAITING:
        return Reason.RUNNER_FAILED, (
            f"runner pod {name} cannot start ({waiting['reason']}: {waiting.get('message') or 'no details'}); "
            "check the runner image (BLACKTOP_RUNNER_IMAGE or the golden path's runner.image)"
        )
    return None


def started(pod: JSON) -> bool:
    """Whether the runner container has started (running or already ended)."""
    state = _container(pod).get("state") or {}
    return "running" in state or "terminated" in state


def not_started(pod: JSON, name: str, seconds: float) -> str:
    """Why a pod has not started after ``seconds``: the scheduler's word, if it said one."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"runner pod {name} was not scheduled in {seconds:.0f}s: {cond.get('message') or cond.get('reason')}"
    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    detail = f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip(": ") if waiting else "still Pending"
    return f"runner pod {name} did not start in {seconds:.0f}s ({detail})"


# -- which leftovers go ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """A run's ServiceAccount and, if it still exists, its pod."""

    name: str
    created: datetime
    pod: JSON | None


def leftovers(accounts: Iterable[JSON], pods: Iterable[JSON]) -> list[Leftover]:
    """Runs by their ServiceAccounts (each owns its pod), oldest first."""
    by_name = {p["metadata"]["name"]: p for p in pods}
    found = [
        Leftover(
            a["metadata"]["name"], parse_time(a["metadata"]["creationTimestamp"]), by_name.get(a["metadata"]["name"])
        )
        for a in accounts
    ]
    return sorted(found, key=lambda left: left.created)


def _finished_at(left: Leftover) -> datetime:
    annotations = ((left.pod or {}).get("metadata") or {}).get("annotations") or {}
    stamp = annotations.get(ANNOTATION_FINISHED)
    return parse_time(stamp) if stamp else left.created


def expired(
    runs: Sequence[Leftover], *, now: datetime, keep_seconds: float, keep_max: int, active: set[str]
) -> list[str]:
    """The runs whose objects go now: finished ones (or with no pod) past ``keep_seconds`` since they
    ended, and beyond the newest ``keep_max`` kept; never one in ``active`` (runs of this process)
    or one whose pod may still run."""
    done = [left for left in runs if left.name not in active and terminated(left.pod)]
    gone = [left.name for left in done if (now - _finished_at(left)).total_seconds() >= keep_seconds]
    kept = [left for left in done if left.name not in gone]
    kept.sort(key=_finished_at)
    gone += [left.name for left in kept[: max(0, len(kept) - keep_max)]]
    return gone
