"""Where a golden path's module files are, for the controllers: a folder or a git commit, analysed.

The GoldenPath reconciler calls :func:`inspect` to find and check the module as the spec names it now
(resolving a git ref to its commit); provisioning calls :func:`module_info` for the files of the
revision a request runs. Git work and file hashing are blocking, so they run in threads. The git
credentials Secret is read here and never leaves: it reaches git as an environment variable only.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path

from blacktop.api.goldenpath import GitSource, GoldenPathSpec
from blacktop.controllers.context import Context
from blacktop.kube.resources import resource_for
from blacktop.terraform import module as modules
from blacktop.terraform.sources import GitAuth, SourceError, is_commit

SECRET = resource_for("v1", "Secret")


@dataclass(frozen=True)
class Found:
    """A module as the golden path names it now: its analysis and, for git, the commit it is at."""

    info: modules.ModuleInfo
    commit: str | None


async def git_auth(ctx: Context, git: GitSource) -> GitAuth | None:
    """The credentials of ``git.secretRef`` (None without one)."""
    ref = git.secret_ref
    if ref is None:
        return None
    secret = await ctx.client.get(SECRET, ref.name, ref.namespace)
    if secret is None:
        raise SourceError(
            f"git credentials Secret {ref.namespace}/{ref.name} does not exist; create it with keys "
            "username and password (an access token goes in password)"
        )
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return GitAuth.from_secret_data(data)


async def _tree(ctx: Context, git: GitSource) -> tuple[Path, str]:
    auth = await git_auth(ctx, git)
    cache = ctx.sources.git
    commit = git.ref if is_commit(git.ref) else await asyncio.to_thread(cache.resolve, git.url, git.ref, auth)
    return await asyncio.to_thread(cache.checkout, git.url, commit, auth), commit


async def inspect(ctx: Context, spec: GoldenPathSpec) -> Found:
    """Find, parse and analyse the module ``spec`` names; ModuleError (SourceError for git) says why not."""
    if spec.git is None:  # hashed every time, parsed only when the files changed
        return Found(await asyncio.to_thread(ctx.modules.inspect, spec.module), None)
    tree, commit = await _tree(ctx, spec.git)
    return Found(await asyncio.to_thread(modules.inspect, tree, spec.module), commit)


async def module_info(ctx: Context, spec: GoldenPathSpec, digest: str | None) -> modules.ModuleInfo:
    """The module a run executes, parsed: the git commit ``spec`` names (a revision's spec names its
    commit), or the folder module with ``digest`` — the files on disk when they still have it (parsed
    once per digest), else the copy kept when that revision was published."""
    if spec.git is not None:
        tree, _ = await _tree(ctx, spec.git)
        return await asyncio.to_thread(ctx.sources.inspect_tree, tree, spec.module)
    info = await asyncio.to_thread(ctx.modules.known, spec.module, digest)
    if digest is None or info.digest == digest:
        return info
    copy = await asyncio.to_thread(ctx.sources.folder, spec.module, digest)
    return await asyncio.to_thread(ctx.sources.inspect_tree, copy.parent, copy.name)


async def keep_folder(ctx: Context, spec: GoldenPathSpec, digest: str) -> None:
    """Keep a copy of a folder module as published, so requests on that revision run those files."""
    if spec.git is None:
        await asyncio.to_thread(ctx.sources.keep, spec.module, digest)
