"""What a run of a request works on, gathered once: the module, its variables, the credentials, the state.

Provisioning, destroy and drift checks all run the golden path's module with the same inputs: the
standard variables (where the request runs, and its uid; never a parameter's), its parameters and its
inputs (other requests' outputs, :mod:`blacktop.controllers.composition`), limited to those the module
declares; the golden path's provider credentials; the request's state. :func:`resolve` gathers them
into one :class:`Inputs` before any run starts, so a missing dependency is reported before a lock
is taken, and everything after it reads typed fields.

:attr:`Inputs.digest` names all of it in one sha256: the request's spec generation, the golden
path's generation, the revision the request runs and the digest of its module, the parameters after defaults, the
module's variables, the credentials Secret's resourceVersion (never its values) and the state. A
successful apply records it in status (``appliedDigest``); while it still matches, a Ready request
needs no run at all, however often it is resumed or resynced.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import InputStatus
from blacktop.controllers import composition, modulesource
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.views import EnvironmentRef, GoldenPathView, RequestView
from blacktop.kube.resources import resource_for
from blacktop.terraform.module import ModuleInfo
from blacktop.terraform.runner import RunnerOptions, RunTarget
from blacktop.terraform.state import state_of

SECRET = resource_for("v1", "Secret")


@dataclass(frozen=True)
class Inputs:
    """A request, what it resolved to, and the target its runs work on."""

    request: RequestView
    environment: EnvironmentRef
    golden_path: GoldenPathView
    parameters: dict[str, Any]  # validated against the golden path's schema, defaults applied
    target: RunTarget
    module: ModuleInfo  # the module files the runs use (folder or git commit), parsed and analysed
    credentials_version: str | None = None  # resourceVersion of the credentials Secret
    request_inputs: tuple[InputStatus, ...] = ()  # where spec.inputs stand (their values are in target only)

    @property
    def digest(self) -> str:
        """sha256 of everything a run of these inputs depends on (see the module docstring)."""
        document = {
            "generation": int(self.request.body["metadata"].get("generation", 1)),
            "goldenPath": {
                "name": self.golden_path.name,
                "generation": int(self.golden_path.body["metadata"].get("generation", 1)),
                "module": self.module.digest,
                "revision": self.golden_path.revision.revision if self.golden_path.revision else None,
            },
            "parameters": self.parameters,
            "variables": dict(self.target.variables),
            "credentials": self.credentials_version,
            "state": self.target.state.state_secret,
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def standard_variables(request: RequestView, env: EnvironmentRef, golden: GoldenPathView) -> dict[str, Any]:
    """Variables every module may declare to learn where it runs (and the uid that marks what it made)."""
    return {
        "name": request.name,
        "namespace": request.namespace,
        "environment": env.name,
        "team": env.team,
        "tier": env.tier,
        "uid": request.uid,
        "golden_path": golden.name,
    }


async def _credentials(ctx: Context, golden: GoldenPathView) -> tuple[dict[str, str], str | None]:
    """The golden path's provider credentials as environment variables (never logged), and the
    resourceVersion of the Secret they came from."""
    ref = golden.spec.credentials_secret_ref
    if ref is None:
        return {}, None
    secret = await ctx.client.get(SECRET, ref.name, ref.namespace)
    if secret is None:
        raise Failure(
            Reason.CREDENTIALS_NOT_FOUND,
            f"credentials Secret {ref.namespace}/{ref.name} of golden path {golden.name!r} does not exist; "
            "the platform team creates it (see the golden path's credentialsSecretRef)",
            delay=ctx.settings.dependency_retry_seconds,
        )
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return values, secret["metadata"].get("resourceVersion")


async def resolve(
    ctx: Context,
    request: RequestView,
    env: EnvironmentRef,
    golden: GoldenPathView,
    parameters: dict[str, Any],
    *,
    settled: bool = True,
) -> Inputs:
    """The inputs of a run; raises Failure when the credentials Secret is missing (it may come),
    InputsNotReady when a source does not deliver (``settled``: from sources Ready for their spec), and
    ModuleError (SourceError for git) when the module cannot be read here (a failed attempt: see
    failures.classify)."""
    # The revision's files: a git commit from the module cache, or a folder parsed once per digest.
    info = await modulesource.module_info(ctx, golden.spec, golden.module_digest)
    # Other requests' outputs (spec.inputs): into the variable file and the redaction list, nowhere else.
    taken = await composition.resolve(ctx, request, settled=settled)
    if not taken.ready:
        raise composition.InputsNotReady(taken, delay=ctx.settings.dependency_retry_seconds)
    # The standard variables are the operator's: a parameter or an input of the same name never
    # overrides them (admission refuses such a parameter, and so does parameters.validate).
    candidates = {**parameters, **taken.values, **standard_variables(request, env, golden)}
    credentials, version = await _credentials(ctx, golden)
    ref, runner = golden.spec.credentials_secret_ref, golden.spec.runner
    target = RunTarget(
        name=request.key,
        module=info.path,
        root=info.root,
        variables={k: v for k, v in candidates.items() if k in info.findings.variables},
        credentials=credentials,
        state=state_of(ctx.settings.namespace, request.uid),
        secrets=tuple(taken.values.values()),
        credentials_secret=(ref.namespace, ref.name) if ref is not None else None,
        runner=RunnerOptions(
            image=runner.image,
            requests=runner.resources.requests.model_dump(exclude_none=True),
            limits=runner.resources.limits.model_dump(exclude_none=True),
        ),
        request=f"{request.namespace}/{request.name}",
    )
    return Inputs(
        request=request,
        environment=env,
        golden_path=golden,
        parameters=parameters,
        target=target,
        module=info,
        credentials_version=version,
        request_inputs=taken.statuses,
    )
