"""GoldenPathRevision: one immutable version of a golden path — what runs, exactly.

The GoldenPath controller writes one whenever what a request would run changes: the module's source
(folder, or git URL and ref), the commit the ref resolved to, the module's files (their digest), the
parameter schema or the outputs. Requests record the revision they were applied with and run that
revision's module, schema and outputs until a rollout (or their owner) moves them. Nobody edits a
revision: the CRD refuses changes to its spec, and only the operator may create or delete them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from blacktop.api.common import DNS_SUBDOMAIN, SpecModel, StatusModel, cel
from blacktop.api.goldenpath import GIT_REF, GIT_URL, MODULE_PATH, OutputMapping

SHA256 = r"^[0-9a-f]{64}$"
COMMIT = r"^[0-9a-f]{40}([0-9a-f]{24})?$"


class RevisionGitSource(SpecModel):
    """The git source of a revision: the ref as written and the commit it resolved to."""

    url: str = Field(max_length=2048, pattern=GIT_URL, description="Repository URL.")
    ref: str = Field(max_length=255, pattern=GIT_REF, description="The ref the golden path named.")
    commit: str = Field(pattern=COMMIT, description="The commit it resolved to, which is what runs.")


class GoldenPathRevisionSpec(SpecModel):
    """What a revision runs; written once by the operator."""

    golden_path: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="The GoldenPath it belongs to.")
    revision: int = Field(ge=1, description="Its number, counting up from 1 for each golden path.")
    module: str = Field(max_length=253, pattern=MODULE_PATH, description="Module folder (in the repository for git).")
    git: RevisionGitSource | None = Field(None, description="The git source, when the module comes from git.")
    module_digest: str = Field(pattern=SHA256, description="sha256 of the module's files.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="The parameter schema of this revision.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    outputs: list[OutputMapping] = Field(default_factory=list, max_length=64, description="Outputs delivered.")
    digest: str = Field(pattern=SHA256, description="sha256 over all of the above but the number: its identity.")


class GoldenPathRevisionStatus(StatusModel):
    """Revisions have no status of their own: requests say which revision they run."""


# The whole spec is immutable once created: a revision is a record of what ran.
REVISION_RULES = [cel("self.spec == oldSelf.spec", "a GoldenPathRevision is immutable; publish a new one")]
