"""What a run of a request works on, gathered once: the module, its variables, the credentials, the state.

Provisioning, destroy and drift checks all run the golden path's module with the same inputs: the
standard variables (where the request runs, and its uid; never a parameter's), its parameters and its
inputs (other requests' outputs, :mod:`blacktop.controllers.composition`), limited to those the module
declares; the golden path's provider credentials; the request's state. :func:`resolve` gathers them
into one :class:`Inputs` before any run starts, so a missing dependency is reported before a lock
is taken, and everything after it reads typed fields. (A check that skips a run whose inputs did not
change would compare them here.)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import InputStatus
from blacktop.controllers import composition, modulesource
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.views import EnvironmentRef, GoldenPathView, RequestView
from blacktop.kube.resources import resource_for
from blacktop.terraform import module as modules
from blacktop.terraform.runner import RunnerOptions, RunTarget
from blacktop.terraform.sources import SourceError
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
    request_inputs: tuple[InputStatus, ...] = ()  # where spec.inputs stand (their values are in target only)


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


async def _credentials(ctx: Context, golden: GoldenPathView) -> dict[str, str]:
    """The golden path's provider credentials as environment variables (never logged)."""
    ref = golden.spec.credentials_secret_ref
    if ref is None:
        return {}
    secret = await ctx.client.get(SECRET, ref.name, ref.namespace)
    if secret is None:
        raise Failure(
            Reason.CREDENTIALS_NOT_FOUND,
            f"credentials Secret {ref.namespace}/{ref.name} of golden path {golden.name!r} does not exist; "
            "the platform team creates it (see the golden path's credentialsSecretRef)",
            delay=ctx.settings.dependency_retry_seconds,
        )
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


async def resolve(
    ctx: Context,
    request: RequestView,
    env: EnvironmentRef,
    golden: GoldenPathView,
    parameters: dict[str, Any],
    *,
    settled: bool = True,
) -> Inputs:
    """The inputs of a run; raises Failure when the module or the credentials are missing, and
    InputsNotReady when a source does not deliver (``settled``: from sources Ready for their spec)."""
    try:
        # The revision's files: a git commit from the module cache, or a folder parsed once per digest.
        info = await modulesource.module_info(ctx, golden.spec, golden.module_digest)
    except modules.ModuleError as exc:
        if isinstance(exc, SourceError):
            reason = Reason.SOURCE_UNAVAILABLE
        elif isinstance(exc, modules.ModuleEscapeError):
            reason = Reason.MODULE_OUTSIDE_ROOT
        else:
            reason = Reason.MODULE_NOT_FOUND
        raise Failure(reason, str(exc), delay=ctx.settings.dependency_retry_seconds) from None
    # Other requests' outputs (spec.inputs): into the variable file and the redaction list, nowhere else.
    taken = await composition.resolve(ctx, request, settled=settled)
    if not taken.ready:
        raise composition.InputsNotReady(taken, delay=ctx.settings.dependency_retry_seconds)
    # The standard variables are the operator's: a parameter or an input of the same name never
    # overrides them (admission refuses such a parameter, and so does parameters.validate).
    candidates = {**parameters, **taken.values, **standard_variables(request, env, golden)}
    credentials = await _credentials(ctx, golden)
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
        request_inputs=taken.statuses,
    )
