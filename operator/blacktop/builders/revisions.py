"""Golden path revisions, pure: their identity, their objects, which to keep, what a request runs.

A revision is identified by a digest over what runs (module folder, git URL and commit, the files'
digest, the parameter schema, the outputs): the git ref's *name* is not part of it, so pointing the
golden path at another tag of the same commit changes nothing, while moving a tag to a new commit
does. Numbers count up per golden path; going back to an older content makes a new number (like
``helm rollback``), so "newer" always means "published later".
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from blacktop.api.goldenpath import GitSource, GoldenPathSpec
from blacktop.api.goldenpathrevision import GoldenPathRevisionSpec, RevisionGitSource
from blacktop.api.kinds import API_VERSION
from blacktop.builders import naming

JSON = dict[str, Any]
MAX_NAME = 253


def revision_spec(
    golden_path: str, number: int, spec: GoldenPathSpec, module_digest: str, commit: str | None
) -> GoldenPathRevisionSpec:
    """The revision ``number`` of ``spec`` as found (its module's digest, the commit of its git ref)."""
    git = None
    if spec.git is not None:
        assert commit is not None, "a git source always resolves to a commit"
        git = RevisionGitSource(url=spec.git.url, ref=spec.git.ref, commit=commit)
    content = {
        "module": spec.module,
        "git": None if git is None else {"url": git.url, "commit": git.commit},
        "moduleDigest": module_digest,
        "parameters": spec.parameters,
        "outputs": [o.model_dump(by_alias=True, mode="json", exclude_none=True) for o in spec.outputs],
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return GoldenPathRevisionSpec(
        golden_path=golden_path,
        revision=number,
        module=spec.module,
        git=git,
        module_digest=module_digest,
        parameters=spec.parameters,
        outputs=spec.outputs,
        digest=digest,
    )


def revision_name(golden_path: str, number: int) -> str:
    """``<golden path>-<number>``, shortened with a hash when the golden path's name is very long."""
    suffix = f"-{number}"
    if len(golden_path) + len(suffix) <= MAX_NAME:
        return golden_path + suffix
    short = hashlib.sha256(golden_path.encode()).hexdigest()[:8]
    return f"{golden_path[: MAX_NAME - len(suffix) - 9]}-{short}{suffix}"


def revision_object(golden_path_body: JSON, spec: GoldenPathRevisionSpec) -> JSON:
    """The GoldenPathRevision object: labelled with its golden path, owned by it (so it goes with it)."""
    name = golden_path_body["metadata"]["name"]
    return {
        "apiVersion": API_VERSION,
        "kind": "GoldenPathRevision",
        "metadata": {
            "name": revision_name(name, spec.revision),
            "labels": {naming.MANAGED_BY: naming.MANAGER, naming.LABEL_GOLDEN_PATH: name},
            "ownerReferences": [naming.owner_reference(golden_path_body)],
        },
        "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True),
    }


def to_prune(numbers: list[int], keep: set[int], limit: int) -> list[int]:
    """Revisions to delete: all but the newest ``limit`` and those in ``keep`` (in use, the target)."""
    newest = set(sorted(numbers, reverse=True)[:limit])
    return sorted(n for n in numbers if n not in newest and n not in keep)


def spec_at(spec: GoldenPathSpec, revision: GoldenPathRevisionSpec) -> GoldenPathSpec:
    """The golden path as a request on ``revision`` sees it: that revision's module (at its commit),
    schema and outputs; everything operational (credentials, cost, monitoring, drift) as it is now."""
    git = None
    if revision.git is not None:
        secret = spec.git.secret_ref if spec.git is not None else None
        git = GitSource(url=revision.git.url, ref=revision.git.commit, secret_ref=secret)
    return spec.model_copy(
        update={"module": revision.module, "git": git, "parameters": revision.parameters, "outputs": revision.outputs}
    )


def describe(revision: GoldenPathRevisionSpec) -> str:
    """One line for messages: ``revision 3 (module svc at v1.2.0, commit 1a2b3c4)``."""
    if revision.git is None:
        return f"revision {revision.revision} (module {revision.module}, files {revision.module_digest[:12]})"
    return (
        f"revision {revision.revision} (module {revision.module} at {revision.git.ref}, "
        f"commit {revision.git.commit[:12]})"
    )
