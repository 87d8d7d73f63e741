"""The images the local node runs, built on this machine without Docker or a registry.

``build_operator_image`` writes ``ghcr.io/blacktop-dev/blacktop:<chart appVersion>`` as an OCI layout
tar that ``ctr -n k8s.io images import`` reads; ``pause_image`` the sandbox image the node's containerd
needs and ``demo_app_image`` the node's test workload, both from static binaries `make tools` builds
into the tool cache. The operator image has four layers, each cached in the tool cache under a hash of
its inputs, so a change rebuilds only its layer and the ones above it:

- ``base``: Debian bookworm's Essential set and ``hack/image/packages.txt`` (mmdebstrap), the user
  65532, ``/var/lib/blacktop``;
- ``deps``: ``/opt/blacktop/venv`` with ``hack/image/requirements.lock``, installed by the image's own
  python3 in a chroot without network from wheels downloaded (hash-checked) on the host;
- ``tools``: tofu, the offline provider mirror and a ``tofu.tfrc`` pointing at it, from the tool cache;
- ``app``: the blacktop package (into the venv) and ``terraform-modules/`` at ``/opt/blacktop/modules``.

Layers are normalised by :mod:`blacktop.localcluster.oci` (sorted, clamped mtimes, numeric owners),
so the same inputs give the same digests. The Dockerfile builds the same contents from the same
``hack/image/`` files for users with Docker; a unit test holds the two configurations together.
Building a layer needs root (mmdebstrap, chroot, real owners in the tree); cached layers do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blacktop.localcluster import oci
from blacktop.toolbox import cache_dir, find_tool

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

REPO = Path(__file__).resolve().parents[3]
IMAGE_REPOSITORY = "ghcr.io/blacktop-dev/blacktop"
# Bump when a change to this module changes what a layer holds: every cached layer is rebuilt.
BUILDER_REVISION = 1

# -- the image's layout and configuration (the Dockerfile's runtime stage must say the same) ---------
VENV = "/opt/blacktop/venv"
TOOL_CACHE = "/opt/blacktop/cache"
MODULES = "/opt/blacktop/modules"
WORKSPACES = "/var/lib/blacktop/workspaces"
USER = "65532:65532"
OPERATOR_ENV: Mapping[str, str] = {
    "PATH": f"{VENV}/bin:{TOOL_CACHE}/bin:/usr/local/bin:/usr/bin:/bin",
    "BLACKTOP_CACHE_DIR": TOOL_CACHE,
    "BLACKTOP_MODULES_ROOT": MODULES,
    "BLACKTOP_WORKSPACE_ROOT": WORKSPACES,
    "HOME": "/tmp",  # noqa: S108 - inside the image: /tmp is an emptyDir in the pod, the only writable home
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    # The root filesystem is read-only in the pod; the .pyc files are shipped (hash-checked).
    "PYTHONDONTWRITEBYTECODE": "1",
}
OPERATOR_LABELS: Mapping[str, str] = {
    "org.opencontainers.image.title": "blacktop",
    "org.opencontainers.image.description": "Blacktop: self-service environments and infrastructure on Kubernetes",
    "org.opencontainers.image.licenses": "Apache-2.0",
}
OPERATOR_PORTS = ("8080/tcp", "8081/tcp", "9443/tcp")  # metrics, health, webhook

# -- how the base is made ----------------------------------------------------------------------------
DEBIAN_SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3
GLIBC_MINOR = 36  # bookworm's glibc 2.36: the newest manylinux tag a wheel may carry
# Debian's merged /usr the debootstrap way (symlinks + usr-is-merged), not the usrmerge package,
# which would pull perl (about 45 MB) into the image.
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"  # containerd's sandbox_image (node.py) names the same
PAUSE_USER = "65535:65535"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says why and what to do."""


def operator_image_config() -> oci.ImageConfig:
    """The OCI config of the operator image: the same ENV/USER/ENTRYPOINT/CMD as the Dockerfile's."""
    return oci.ImageConfig(
        entrypoint=["blacktop"],
        cmd=["run"],
        env=OPERATOR_ENV,
        user=USER,
        labels=OPERATOR_LABELS,
        exposed_ports=OPERATOR_PORTS,
    )


def operator_image_name(repo: Path = REPO) -> str:
    """``ghcr.io/blacktop-dev/blacktop:<appVersion>``: the tag the chart deploys by default."""
    chart = yaml.safe_load((repo / "charts/blacktop/Chart.yaml").read_text())
    return f"{IMAGE_REPOSITORY}:{chart['appVersion']}"


def images_dir(cache: Path | None = None) -> Path:
    """Where images, their cached layers and wheels live: ``<tool cache>/images``."""
    return (cache or cache_dir()) / "images"


def build_operator_image(
    cache: Path | None = None,
    *,
    out: Path | None = None,
    repo: Path = REPO,
    refresh_base: bool = False,
    progress: Progress | None = None,
) -> oci.ImageArchive:
    """Build (or reuse) the operator image from ``repo`` and the tool cache ``cache``.

    Returns the OCI archive (default ``<cache>/images/blacktop-<appVersion>.oci.tar``) to import with
    ``ctr -n k8s.io images import``. ``refresh_base`` rebuilds the Debian base although its inputs are
    unchanged, to pick up Debian's updates (the archive's contents are not an input of its key).
    """
    cache = cache or cache_dir()
    say = progress or log.info
    name = operator_image_name(repo)
    out = out or images_dir(cache) / f"blacktop-{name.rpartition(':')[2]}.oci.tar"
    started = time.monotonic()
    say(f"==> operator image {name}")
    with _Build.open(cache, repo, say, "operator") as build:
        base = build.layer("base", build.base_inputs(), build.make_base, "Debian bookworm + python3", refresh_base)
        deps = build.layer("deps", build.deps_inputs(base), lambda t: build.make_deps(t, base), "Python dependencies")
        tools = build.layer("tools", build.tools_inputs(), build.make_tools, "tofu + provider mirror")
        app = build.layer("app", build.app_inputs(deps), lambda t: build.make_app(t, base, deps), "blacktop + modules")
        archive = build.archive(out, name, [base, deps, tools, app], operator_image_config())
    say(f"    done in {time.monotonic() - started:.1f}s: {archive.path}")
    return archive


def pause_image(
    cache: Path | None = None, *, out: Path | None = None, progress: Progress | None = None
) -> oci.ImageArchive:
    """Build (or reuse) the node's sandbox image ``registry.k8s.io/pause:3.10.1``.

    One layer with the tool cache's static ``pause`` (`make tools` compiles Kubernetes' own pause.c
    from the pinned module), run as 65535; cached by the binary's digest.
    """
    cache = cache or cache_dir()
    say = progress or log.info
    binary = cache / "bin/pause"
    if not binary.is_file():
        raise ImageBuildError(f"{binary} is missing; run `make tools` (it compiles Kubernetes' pause.c)")
    out = out or images_dir(cache) / f"pause-{PAUSE_IMAGE.rpartition(':')[2]}.oci.tar"
    config = oci.ImageConfig(entrypoint=["/pause"], user=PAUSE_USER)
    with _Build.open(cache, REPO, say, "pause") as build:

        def make(target: Path) -> oci.Layer:
            return oci.layer_from_files(target, [oci.FileEntry("pause", binary, 0o755)], epoch=build.epoch)

        layer = build.layer("pause", {"pause": build.hash(binary)}, make, "the tool cache's pause")
        return build.archive(out, PAUSE_IMAGE, [layer], config)


DEMO_APP_IMAGE = "blacktop.local/demo-app:1"


def demo_app_image() -> oci.ImageArchive:
    """An image of the static `demo-app` (hack/tools/demo-app: an HTTP service and client), for the
    node's tests and the service golden path's example; user 65534, listens on 8080."""
    binary = find_tool("demo-app")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    out = images_dir() / f"demo-app-{digest}.tar"
    if out.is_file():
        return oci.ImageArchive(out, DEMO_APP_IMAGE, "", out.stat().st_size)
    entries = [oci.FileEntry("usr/local/bin/demo-app", binary, 0o755), oci.FileEntry("tmp/", mode=0o1777)]
    layer = oci.layer_from_files(images_dir() / "layers" / f"demo-app-{digest}.tar", entries)
    config = oci.ImageConfig(
        entrypoint=["/usr/local/bin/demo-app"], cmd=["serve"], user="65534:65534", exposed_ports=["8080/tcp"]
    )
    return oci.write_archive(out, DEMO_APP_IMAGE, [layer], config)


# -- the build: one per call, holding the cache lock ---------------------------------------------------


@dataclass
class _Build:
    """One build: the tool cache it reads and caches into, a work folder, and what the work rootfs holds."""

    cache: Path
    repo: Path
    say: Progress
    work: Path
    epoch: int
    rootfs_digests: list[str] = field(default_factory=list)  # the layers the work rootfs holds
    _hashes: dict[Path, str] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def open(cls, cache: Path, repo: Path, say: Progress, kind: str) -> Iterator[_Build]:
        """Lock the cache for one build of ``kind`` at a time, clear a killed build's leftovers, give a work dir.

        One lock per kind: a node starting (the pause image) never waits for an operator image build.
        """
        root = images_dir(cache)
        (root / "layers").mkdir(parents=True, exist_ok=True)
        with (root / f".lock-{kind}").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tmp = root / "tmp" / kind
            # Holding the lock, anything in tmp/ is from a build that was killed: no mounts can be left
            # (chroots run in mount namespaces of their own), so deleting it is all the cleanup.
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            work = Path(tempfile.mkdtemp(dir=tmp))
            try:
                yield cls(cache, repo, say, work, oci.source_date_epoch())
            finally:
                shutil.rmtree(work, ignore_errors=True)

    # -- the layer cache --

    def layer(
        self,
        name: str,
        inputs: Mapping[str, object],
        make: Callable[[Path], oci.Layer],
        what: str,
        rebuild: bool = False,
    ) -> oci.Layer:
        """The cached layer ``name`` for these inputs, or ``make`` it (into the given tar) and cache it."""
        key = _key({"layer": name, "builder": BUILDER_REVISION, "epoch": self.epoch, **inputs})
        layers = images_dir(self.cache) / "layers"
        path, meta = layers / f"{name}-{key[:24]}.tar", layers / f"{name}-{key[:24]}.json"
        if not rebuild and (cached := _cached_layer(path, meta)):
            self.say(f"    {name:<6} {what}: cached {_short(cached)}")
            return cached
        self.say(f"    {name:<6} {what}: building")
        started = time.monotonic()
        built = make(self.work / f"{name}.tar")
        os.replace(built.path, path)
        layer = oci.Layer(path, built.digest, built.size)
        _write_atomically(meta, json.dumps({"digest": layer.digest, "size": layer.size, "key": key}).encode())
        _prune(layers, name, keep=path)
        self.say(f"    {name:<6} {what}: built {_short(layer)} in {time.monotonic() - started:.1f}s")
        return layer

    def archive(self, out: Path, name: str, layers: list[oci.Layer], config: oci.ImageConfig) -> oci.ImageArchive:
        started = time.monotonic()
        previous = oci.read_archive(out)
        archive = oci.write_archive(out, name, layers, config, epoch=self.epoch, reuse=True)
        if previous == archive:
            self.say(f"    archive {out.name}: unchanged ({_mb(archive.size)})")
        else:
            self.say(f"    archive {out.name}: written ({_mb(archive.size)}) in {time.monotonic() - started:.1f}s")
        return archive

    # -- inputs: everything a layer is made from, hashed --

    def base_inputs(self) -> dict[str, object]:
        files = ["packages.txt", "dpkg.cfg", "sources.list", "setup-base.sh"]
        return {
            "suite": DEBIAN_SUITE,
            "files": {f: _sha256_file(self.repo / "hack/image" / f) for f in files},
            "mmdebstrap": _version_line(["mmdebstrap", "--version"]),
        }

    def deps_inputs(self, base: oci.Layer) -> dict[str, object]:
        files = ["requirements.lock", "build-requirements.lock", "install-venv.sh"]
        return {"base": base.digest, "files": {f: _sha256_file(self.repo / "hack/image" / f) for f in files}}

    def tools_inputs(self) -> dict[str, object]:
        return {"files": {rel: self.hash(src) for rel, src in self._tool_files().items()}, "tfrc": self._tfrc()}

    def app_inputs(self, deps: oci.Layer) -> dict[str, object]:
        sources = {rel: _sha256_file(src) for rel, src in self._app_files().items()}
        script = _sha256_file(self.repo / "hack/image/install-venv.sh")
        return {"deps": deps.digest, "files": sources, "install-venv.sh": script}

    # -- base: mmdebstrap --

    def make_base(self, target: Path) -> oci.Layer:
        _need_root("the Debian base (mmdebstrap)")
        _need_tools({"mmdebstrap": "mmdebstrap", "chroot": "coreutils"})
        if not MERGED_USR_HOOKS.is_dir():
            raise ImageBuildError(f"{MERGED_USR_HOOKS} is missing: mmdebstrap >= 1.0 ships it; upgrade mmdebstrap")
        here = self.repo / "hack/image"
        rootfs = self.work / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)  # mmdebstrap creates it
        self.rootfs_digests = []
        argv = [
            "mmdebstrap",
            # As root, unshare mode still runs in mount/pid namespaces of its own: nothing it mounts
            # can outlive it, even when killed.
            "--mode=unshare",
            "--format=directory",
            "--variant=essential",
            f"--include={','.join(_package_list(here / 'packages.txt'))}",
            f"--hook-dir={MERGED_USR_HOOKS}",
            f"--dpkgopt={here / 'dpkg.cfg'}",
            f"--customize-hook=copy-in {here / 'setup-base.sh'} /tmp",
            '--customize-hook=chroot "$1" /bin/sh /tmp/setup-base.sh',
            # The host's files (mmdebstrap copies them for apt); the runtime mounts its own.
            '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
            DEBIAN_SUITE,
            str(rootfs),
            str(here / "sources.list"),
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(self.epoch)}
        _run(argv, what="mmdebstrap", env=env, log_file=self.work / "mmdebstrap.log")
        layer = oci.layer_from_tree(target, rootfs, epoch=self.epoch)
        self.rootfs_digests = [layer.digest]
        return layer

    # -- deps: the venv from the lock, in a chroot --

    def make_deps(self, target: Path, base: oci.Layer) -> oci.Layer:
        rootfs = self._rootfs([base])
        build_dir = rootfs / "build"
        _link_tree(self._wheels(), build_dir / "wheels")
        for name in ("requirements.lock", "install-venv.sh"):
            shutil.copy(self.repo / "hack/image" / name, build_dir / name)
        argv = ["/bin/sh", "/build/install-venv.sh", "deps", "/build/wheels", "/build/requirements.lock"]
        layer = self._changes(target, rootfs, lambda: self._chroot(rootfs, argv, "installing requirements.lock"))
        shutil.rmtree(build_dir)
        self.rootfs_digests = [base.digest, layer.digest]
        return layer

    # -- tools: tofu, the mirror, tofu.tfrc --

    def _tool_files(self) -> dict[str, Path]:
        """Image path (relative) -> file in the tool cache, for tofu and every file of the mirror."""
        tofu, mirror = self.cache / "bin/tofu", self.cache / "terraform-mirror"
        if not tofu.is_file() or not mirror.is_dir():
            raise ImageBuildError(f"tofu or the provider mirror is missing in {self.cache}; run `make tools`")
        prefix = TOOL_CACHE.strip("/")
        files = {f"{prefix}/bin/tofu": tofu}
        for path in sorted(mirror.rglob("*")):
            if path.is_file():
                files[f"{prefix}/terraform-mirror/{path.relative_to(mirror).as_posix()}"] = path
        return files

    def _tfrc(self) -> str:
        """install.sh's tofu.tfrc with the image's mirror path instead of the tool cache's."""
        tfrc = self.cache / "tofu.tfrc"
        if not tfrc.is_file():
            raise ImageBuildError(f"{tfrc} is missing; run `make tools`")
        text, mirror = tfrc.read_text(), str(self.cache / "terraform-mirror")
        if f'"{mirror}"' not in text:
            raise ImageBuildError(f"{tfrc} does not name the mirror {mirror}; run `make tools` to rewrite it")
        return text.replace(f'"{mirror}"', f'"{TOOL_CACHE}/terraform-mirror"')

    def make_tools(self, target: Path) -> oci.Layer:
        staging = self.work / "tools"
        staged: dict[str, Path] = {}  # content hash -> first staged file
        for rel, src in self._tool_files().items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            # The mirror holds each provider twice (registry.opentofu.org and registry.terraform.io):
            # identical files share one inode here, so the layer stores them once (a tar hard link).
            digest = self.hash(src)
            _link_or_copy(staged.get(digest, src), dst)
            staged.setdefault(digest, dst)
        (staging / TOOL_CACHE.strip("/") / "tofu.tfrc").write_text(self._tfrc())
        return oci.layer_from_tree(target, staging, epoch=self.epoch, owner=(0, 0), canonical_modes=True)

    # -- app: the blacktop package and the modules --

    def _app_files(self) -> dict[str, Path]:
        """Source path (relative to the repo) -> file: what the package and the modules are built from."""
        files = {name: self.repo / name for name in ("pyproject.toml", "README.md")}
        for top in ("operator", "terraform-modules"):
            for path in sorted((self.repo / top).rglob("*")):
                rel = path.relative_to(self.repo)
                if path.is_file() and not _ignored(rel):
                    files[rel.as_posix()] = path
        return files

    def make_app(self, target: Path, base: oci.Layer, deps: oci.Layer) -> oci.Layer:
        rootfs = self._rootfs([base, deps])
        build_dir, modules = rootfs / "build", rootfs / MODULES.strip("/")
        _link_tree(self._wheels(), build_dir / "wheels")
        shutil.copy(self.repo / "hack/image/install-venv.sh", build_dir / "install-venv.sh")
        sources = self._app_files()
        for rel, path in sources.items():
            if not rel.startswith("terraform-modules/"):
                (rootfs / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, rootfs / "src" / rel)

        def install() -> None:
            for rel, path in sources.items():
                if rel.startswith("terraform-modules/"):
                    dest = modules / rel.removeprefix("terraform-modules/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
            self._chroot(
                rootfs, ["/bin/sh", "/build/install-venv.sh", "app", "/build/wheels", "/src"], "installing blacktop"
            )

        self.rootfs_digests = []  # src/ and build/ stay behind: this root is not reused
        return self._changes(target, rootfs, install, canonical_modes=True)

    # -- helpers of the rootfs steps --

    def hash(self, path: Path) -> str:
        """sha256 of a file, once per build (the tools are hashed for the key and again for staging)."""
        if path not in self._hashes:
            self._hashes[path] = _sha256_file(path)
        return self._hashes[path]

    def _rootfs(self, layers: list[oci.Layer]) -> Path:
        """The work root filesystem holding exactly ``layers`` (extracted from the cache unless it does)."""
        rootfs = self.work / "rootfs"
        if self.rootfs_digests == [la.digest for la in layers] and rootfs.is_dir():
            return rootfs
        _need_root("a layer on top of the Debian base (chroot)")
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir()
        for layer in layers:
            # GNU tar as root keeps numeric owners, modes and hard links; these layers have no whiteouts.
            _run(["tar", "-xpf", str(layer.path), "--numeric-owner", "-C", str(rootfs)], what="extracting a layer")
        self.rootfs_digests = [la.digest for la in layers]
        return rootfs

    def _chroot(self, rootfs: Path, argv: list[str], what: str) -> None:
        """Run ``argv`` as root in a chroot of ``rootfs``, with a clean environment and no network."""
        _need_tools({"unshare": "util-linux", "chroot": "coreutils"})
        env = ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", f"SOURCE_DATE_EPOCH={self.epoch}"]
        # No network (everything comes from the wheel folder); its own pid namespace, so a killed build
        # leaves no process behind. No mounts: pip and compileall need neither /proc nor /dev.
        cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--", "chroot", str(rootfs)]
        _run([*cmd, "/usr/bin/env", "-i", *env, *argv], what=what, log_file=self.work / "chroot.log")

    def _changes(
        self, target: Path, rootfs: Path, step: Callable[[], None], *, canonical_modes: bool = False
    ) -> oci.Layer:
        """The layer of what ``step`` adds or changes under /opt/blacktop of ``rootfs``."""
        watched = rootfs / "opt/blacktop"
        before = _snapshot(watched, rootfs)
        step()
        after = _snapshot(watched, rootfs)
        if removed := sorted(set(before) - set(after)):
            raise ImageBuildError(f"a build step removed {removed[:5]}: layers here cannot delete files (no whiteouts)")
        changed = {rel for rel, meta in after.items() if before.get(rel) != meta}
        return oci.layer_from_tree(
            target, rootfs, epoch=self.epoch, include=changed, owner=(0, 0), canonical_modes=canonical_modes
        )

    def _wheels(self) -> Path:
        """The wheels (and sdists) of both lock files, downloaded with hashes checked, cached by lock."""
        here = self.repo / "hack/image"
        locks = [here / "requirements.lock", here / "build-requirements.lock"]
        platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)]
        platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
        key = _key({"locks": [_sha256_file(lock) for lock in locks], "platforms": platforms})
        wheels = images_dir(self.cache) / "wheels" / key[:24]
        if (wheels / ".complete").exists():
            return wheels
        self.say("           downloading the locked wheels from PyPI (hashes checked)")
        tmp = self.work / "wheels"
        # The host's pip fetches them for the image's interpreter and platform, so the host's CA
        # bundle (PIP_CERT, an intercepting proxy's) is used here and never enters the image.
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
        argv += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
        argv += ["--abi", f"cp{PYTHON_VERSION.replace('.', '')}"]
        for platform in platforms:
            argv += ["--platform", platform]
        argv += ["-d", str(tmp)]
        for lock in locks:
            argv += ["-r", str(lock)]
        _run(argv, what="pip download")
        (tmp / ".complete").touch()
        shutil.rmtree(wheels.parent, ignore_errors=True)  # one wheel folder: the current locks'
        wheels.parent.mkdir(parents=True)
        shutil.move(tmp, wheels)
        return wheels


# -- small helpers -------------------------------------------------------------------------------------

_IGNORED_NAMES = {"__pycache__", ".terraform", ".terraform.lock.hcl", ".DS_Store"}
_IGNORED_SUFFIXES = (".pyc", ".egg-info")


def _ignored(rel: Path) -> bool:
    """Local leftovers never part of the image (.dockerignore says the same for Docker)."""
    return any(part in _IGNORED_NAMES or part.endswith(_IGNORED_SUFFIXES) or ".tfstate" in part for part in rel.parts)


def _package_list(path: Path) -> list[str]:
    packages = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [p for p in packages if p]


def _run(
    argv: list[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
) -> str:
    """Run a build command; on failure raise with what it said (the end of its log)."""
    try:
        if log_file is None:
            captured = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
            code, stdout, output = captured.returncode, captured.stdout, captured.stdout + captured.stderr
        else:
            with log_file.open("a") as handle:
                logged = subprocess.run(argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, check=False)
            code, stdout, output = logged.returncode, "", log_file.read_text(errors="replace")
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {exc}") from exc
    if code != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {code}):\n{tail}")
    return stdout


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"building {what} needs root (mmdebstrap and chroot create files owned by root); run as root, "
            "or build the same image with Docker: docker build -t ghcr.io/blacktop-dev/blacktop:<version> ."
        )


def _need_tools(tools: Mapping[str, str]) -> None:
    missing = {tool: package for tool, package in tools.items() if shutil.which(tool) is None}
    if missing:
        names = ", ".join(sorted(missing))
        raise ImageBuildError(f"{names} not found; install {' '.join(sorted(set(missing.values())))} (`make tools`)")


def _version_line(argv: list[str]) -> str:
    _need_tools({argv[0]: argv[0]})
    return _run(argv, what=" ".join(argv)).splitlines()[0].strip()


def _snapshot(top: Path, root: Path) -> dict[str, tuple[int, int, int]]:
    """Path (relative to ``root``) -> (mode, size, mtime) of everything under ``top``, ``top`` included."""
    if not top.exists():
        return {}
    found = {}
    for path in [top, *top.rglob("*")]:
        info = path.lstat()
        found[path.relative_to(root).as_posix()] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes the file ``src`` names (a symlink's target, never the link: os.link keeps links)."""
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=lambda s, d: _link_or_copy(Path(s), Path(d)))


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _key(inputs: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _cached_layer(path: Path, meta: Path) -> oci.Layer | None:
    try:
        info = json.loads(meta.read_text())
        if path.stat().st_size == info["size"]:
            return oci.Layer(path, info["digest"], info["size"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _prune(layers: Path, name: str, keep: Path, newest: int = 2) -> None:
    """Keep the ``newest`` cached layers of ``name`` (switching branches back stays cheap), drop older ones."""
    tars = sorted(layers.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [t for t in tars if t != keep][newest - 1 :]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _short(layer: oci.Layer) -> str:
    return f"{layer.digest[7:19]} ({_mb(layer.size)})"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
