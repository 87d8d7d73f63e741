"""Module sources in git: resolve a ref to a commit, fetch exactly that commit into a bounded cache.

A golden path may take its module from a git repository (``spec.git``: URL, ref; ``spec.module``:
the folder in it). :meth:`GitCache.resolve` asks the server what the ref points at (``git
ls-remote``; a full commit is taken as is); :meth:`GitCache.checkout` fetches that one commit into a
bare repository per URL and writes its tree, once, into ``<root>/trees/<url>-<commit>``, where the
same module analysis as for folder modules reads it. A tree is never changed after it is written,
so a request runs precisely the commit its revision names.

Git runs as a plain subprocess with a scrubbed environment: no system or user configuration, no
terminal prompts, only the http, https and git transports (never ``file://`` or ``ext::``), a
timeout, and the URL always after ``--``. Credentials (HTTP basic: username and password or access
token) reach git as an ``Authorization`` header in ``GIT_CONFIG_*`` environment variables scoped to
the repository URL: never on a command line, never in a URL, and redacted from every message.
The cache is bounded: at most ``max_trees`` trees and as many bare repositories, least recently used
first out, and a commit whose tree is larger than ``max_bytes`` is refused.

Folder modules have no history of their own, so :class:`ModuleSources` keeps a copy of each version
it published as a revision (by the digest of its files, same bound): a request on an older revision
runs that copy while the operator runs, and is refused with an explanation once it is gone.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from blacktop.terraform import module as modules
from blacktop.terraform.module import ModuleError
from blacktop.terraform.redact import redact, tail

COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SCHEMES = ("https://", "http://", "git://")
_COMPLETE = ".blacktop-complete"  # written last into a tree: a tree without it is a leftover


class SourceError(ModuleError):
    """The git source cannot be used; the message says why (credentials already redacted)."""


@dataclass(frozen=True)
class GitAuth:
    """HTTP basic credentials from a golden path's git Secret (``username``, ``password``)."""

    username: str = ""
    password: str = ""

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> GitAuth:
        """From a Secret's decoded data; a token alone (in ``password``) gets a placeholder user name."""
        password = data.get("password", "")
        username = data.get("username", "") or ("token" if password else "")
        return cls(username=username, password=password)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a message."""
        if not self.password:
            return ()
        header = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return (self.password, header)

    def environment(self, url: str) -> dict[str, str]:
        """git configuration (as environment variables) sending the credentials to ``url`` only."""
        if not self.password:
            return {}
        header = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{url}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {header}",
        }


def is_commit(ref: str) -> bool:
    """Whether ``ref`` is a full commit ID (SHA-1, or SHA-256 repositories)."""
    return COMMIT_RE.fullmatch(ref) is not None


def check_url(url: str) -> None:
    """Refuse URLs git must not be pointed at: other transports, credentials inside, option-like."""
    if not url.startswith(_SCHEMES):
        raise SourceError(f"git URL {url!r} must start with https://, http:// or git:// (SSH is not supported)")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise SourceError("git URL must not contain credentials; put them in the golden path's git.secretRef Secret")


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def pick_commit(listing: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output: a tag, then a branch, then an exact ref
    name; an annotated tag gives the commit it points at (its peeled ``^{}`` line). Pure."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if sha.strip() and name.strip():
            refs[name.strip()] = sha.strip()
    for name in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if f"{name}^{{}}" in refs:
            return refs[f"{name}^{{}}"]
        if name in refs:
            return refs[name]
    return None


def tree_bytes(listing: str) -> int:
    """Total size of the blobs in ``git ls-tree -r -l`` output (submodules count as nothing). Pure."""
    total = 0
    for line in listing.splitlines():
        fields = line.partition("\t")[0].split()
        if len(fields) == 4 and fields[3].isdigit():
            total += int(fields[3])
    return total


class GitCache:
    """Resolves refs and holds checked-out commits under ``root`` (blocking: call it in a thread)."""

    def __init__(
        self, root: Path, *, max_trees: int = 32, max_bytes: int = 64 * 1024 * 1024, timeout: float = 120.0
    ) -> None:
        self.root = root
        self.max_trees = max_trees
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- git as a subprocess -----------------------------------------------------------------------

    def _env(self, url: str, auth: GitAuth | None) -> dict[str, str]:
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ALLOW_PROTOCOL": "http:https:git",
        }
        if "SSL_CERT_FILE" in os.environ:
            env["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
        env.update((auth or GitAuth()).environment(url))
        return env

    def _git(
        self, args: list[str], *, url: str, auth: GitAuth | None, cwd: Path | None = None, what: str
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                ["git", *args],
                cwd=cwd,
                env=self._env(url, auth),
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"{what} {url}: git gave no answer within {self.timeout:.0f}s") from None
        except FileNotFoundError:
            raise SourceError("git is not installed on the operator; git module sources need it") from None
        if result.returncode != 0:
            detail = tail(result.stderr.decode(errors="replace")) or f"exit code {result.returncode}"
            raise SourceError(redact(f"{what} {url} failed: {detail}", (auth or GitAuth()).secrets))
        return result

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- the two operations ----------------------------------------------------------------------------

    def resolve(self, url: str, ref: str, auth: GitAuth | None = None) -> str:
        """The commit ``ref`` points at on the server now (a full commit ID is returned as is)."""
        check_url(url)
        if is_commit(ref):
            return ref
        listing = self._git(["ls-remote", "--", url], url=url, auth=auth, what="listing the refs of").stdout
        commit = pick_commit(listing.decode(errors="replace"), ref)
        if commit is None:
            raise SourceError(f"ref {ref!r} not found in {url}: name a tag, a branch or a full 40-hex commit")
        return commit

    def checkout(self, url: str, commit: str, auth: GitAuth | None = None) -> Path:
        """The tree of ``commit`` (fetched once, then served from the cache)."""
        check_url(url)
        if not is_commit(commit):
            raise SourceError(f"{commit!r} is not a full commit ID")
        tree = self.root / "trees" / f"{_key(url)}-{commit}"
        with self._lock(f"{url}@{commit}"):
            if (tree / _COMPLETE).exists():
                os.utime(tree)  # recently used: evicted last
                return tree
            with self._lock(url):  # one fetch per repository at a time
                repo = self._repository(url, commit, auth)
                self._write_tree(repo, url, commit, tree, auth)
        self._evict()
        return tree

    def _repository(self, url: str, commit: str, auth: GitAuth | None) -> Path:
        repo = self.root / "repos" / _key(url)
        if not (repo / "HEAD").exists():
            shutil.rmtree(repo, ignore_errors=True)
            repo.mkdir(parents=True)
            self._git(["init", "--bare", "--quiet", str(repo)], url=url, auth=None, what="creating a cache for")
        os.utime(repo)
        if self._has(repo, commit, url):
            return repo
        try:  # servers speaking protocol v2 hand out any commit they have
            self._git(
                ["fetch", "--quiet", "--no-tags", "--depth=1", "--", url, commit],
                url=url,
                auth=auth,
                cwd=repo,
                what="fetching",
            )
        except SourceError:  # older servers only hand out what a ref points at: take them all
            self._git(
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--",
                    url,
                    "+refs/heads/*:refs/cached/heads/*",
                    "+refs/tags/*:refs/cached/tags/*",
                ],
                url=url,
                auth=auth,
                cwd=repo,
                what="fetching",
            )
        if not self._has(repo, commit, url):
            raise SourceError(f"commit {commit} is not in {url}")
        return repo

    def _has(self, repo: Path, commit: str, url: str) -> bool:
        try:
            self._git(["cat-file", "-e", f"{commit}^{{commit}}"], url=url, auth=None, cwd=repo, what="reading")
        except SourceError:
            return False
        return True

    def _write_tree(self, repo: Path, url: str, commit: str, tree: Path, auth: GitAuth | None) -> None:
        """``git archive`` of the commit, unpacked with tarfile's ``data`` filter (no links out, no
        devices, no absolute paths), into a temporary folder renamed into place."""
        sizes = self._git(["ls-tree", "-r", "-l", commit], url=url, auth=None, cwd=repo, what="reading").stdout
        total = tree_bytes(sizes.decode(errors="replace"))
        if total > self.max_bytes:
            raise SourceError(
                f"commit {commit} of {url} holds {total} bytes, more than the {self.max_bytes} a module may have"
            )
        (self.root / "trees").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root / "trees"))
        try:
            archive = staging / "archive.tar"
            with archive.open("wb") as out:
                result = subprocess.run(
                    ["git", "archive", "--format=tar", commit],
                    cwd=repo,
                    env=self._env(url, None),
                    stdout=out,
                    stderr=subprocess.PIPE,
                    timeout=self.timeout,
                    check=False,
                )
            if result.returncode != 0:
                raise SourceError(f"reading commit {commit} of {url} failed: {tail(result.stderr.decode())}")
            content = staging / "tree"
            try:
                with tarfile.open(archive) as tar:
                    _extract_data(tar, content)
            except tarfile.TarError as exc:  # e.g. a symlink pointing outside the repository
                raise SourceError(f"commit {commit} of {url} cannot be unpacked safely: {exc}") from None
            archive.unlink()
            (content / _COMPLETE).write_text(f"{url} {commit}\n")
            shutil.rmtree(tree, ignore_errors=True)  # an incomplete leftover of a crashed run
            content.rename(tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _evict(self) -> None:
        """Keep the newest ``max_trees`` trees and repositories (by last use)."""
        for folder in (self.root / "trees", self.root / "repos"):
            if not folder.is_dir():
                continue
            entries = sorted(
                (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )
            for stale in entries[self.max_trees :]:
                shutil.rmtree(stale, ignore_errors=True)


class ModuleSources:
    """Every module a revision may name: git commits (:class:`GitCache`) and copies of folder modules."""

    def __init__(
        self,
        root: Path,
        modules_root: Path,
        *,
        max_entries: int = 32,
        max_bytes: int = 64 * 1024 * 1024,
        timeout: float = 120.0,
    ) -> None:
        self.modules_root = modules_root
        self.git = GitCache(root / "git", max_trees=max_entries, max_bytes=max_bytes, timeout=timeout)
        self.copies = root / "folders"
        self.max_entries = max_entries
        self._guard = threading.Lock()
        self._parsed: dict[Path, modules.ModuleInfo] = {}  # trees never change: parse each once

    def inspect_tree(self, root: Path, module: str) -> modules.ModuleInfo:
        """Parse ``module`` in an immutable tree of this cache (a commit, a folder copy) once."""
        path = modules.resolve(root, module)
        with self._guard:
            cached = self._parsed.get(path)
        if cached is not None and path.exists():
            return cached
        info = modules.inspect(root, module)
        with self._guard:
            if len(self._parsed) >= 4 * self.max_entries:  # bounded like the trees themselves
                self._parsed.clear()
            self._parsed[path] = info
        return info

    def keep(self, module: str, digest: str) -> Path:
        """Copy the folder module as it is now, if its files still have ``digest``; returns the copy."""
        copy = self.copies / digest
        with self._guard:
            if (copy / _COMPLETE).exists():
                os.utime(copy)
                return copy / "module"
            folder = modules.resolve(self.modules_root, module)
            if modules.digest(folder) != digest:
                raise ModuleError(f"module {module!r} changed on disk before its files could be kept")
            self.copies.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.copies))
            try:
                shutil.copytree(
                    folder, staging / "module", symlinks=False, ignore=shutil.ignore_patterns(".terraform*")
                )
                (staging / _COMPLETE).write_text(f"{module} {digest}\n")
                shutil.rmtree(copy, ignore_errors=True)
                staging.rename(copy)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            entries = sorted(
                (p for p in self.copies.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )
            for stale in entries[self.max_entries :]:
                shutil.rmtree(stale, ignore_errors=True)
        return copy / "module"

    def folder(self, module: str, digest: str | None) -> Path:
        """The files of folder ``module`` at ``digest`` (None: as they are now)."""
        if digest is None:
            return modules.resolve(self.modules_root, module)
        copy = self.copies / digest
        if (copy / _COMPLETE).exists():
            os.utime(copy)
            return copy / "module"
        try:
            return self.keep(module, digest)
        except ModuleError:
            raise ModuleError(
                f"the files of module {module!r} at this revision (digest {digest[:12]}) are no longer on disk: "
                "a folder module keeps only its current files (and copies while the operator runs); "
                "move the request to a newer revision, or publish modules from git to keep every version"
            ) from None


def _extract_data(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` into ``dest`` like tarfile's ``data`` filter: regular files, folders and links
    that stay inside ``dest``, nothing absolute, no devices. Python before 3.11.4 (Debian 12's
    3.11.2, the operator image's) has no filters, so the same rules are checked here first."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    members = tar.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if member.name.startswith("/") or not target.is_relative_to(root):
            raise tarfile.TarError(f"{member.name!r} would be extracted outside the destination")
        if not (member.isfile() or member.isdir() or member.issym()):
            raise tarfile.TarError(f"{member.name!r} is a special file")
        if member.issym():
            pointed = (target.parent / member.linkname).resolve()
            if member.linkname.startswith("/") or not pointed.is_relative_to(root):
                raise tarfile.TarError(
                    f"{member.name!r} would link to {member.linkname!r}, which is outside the destination"
                )
        member.mode = (member.mode or 0o644) & 0o755  # no set-id bits, as the data filter does
    tar.extractall(dest, members=members)  # noqa: S202 (every member checked above)
