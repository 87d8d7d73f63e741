"""OCI images written without a registry or a container engine: reproducible layers and image archives.

The local node runs images that were never pulled: Blacktop writes them as OCI image layouts (the
format `docker save`/`skopeo` produce and `ctr images import` reads) from plain folders and files.
Layers are uncompressed tars made deterministic (sorted entries, fixed mtimes, numeric owners, no
user/group names), so the same inputs give the same digests on every machine and rebuilds are
cache hits. Nothing here runs a process: building a root filesystem is the caller's business.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# A fixed timestamp for every file in a layer (2024-01-01T00:00:00Z) unless SOURCE_DATE_EPOCH says otherwise.
DEFAULT_EPOCH = 1704067200
_CHUNK = 1 << 20

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def source_date_epoch() -> int:
    """The timestamp layers carry: ``$SOURCE_DATE_EPOCH`` (reproducible-builds.org) or a fixed default."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(raw) if raw.isdigit() else DEFAULT_EPOCH


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tar on disk: its digest is also its diff ID."""

    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class FileEntry:
    """A file to put into a layer: its path in the image, its content (bytes or a file), mode, owner;
    with ``symlink_to`` a symbolic link instead, and a name ending in ``/`` is a folder (content ignored)."""

    name: str
    content: bytes | Path = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    symlink_to: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the OCI image config Blacktop sets."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()


def _digest_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return f"sha256:{sha.hexdigest()}", size


def _normalise(info: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    info.mtime = min(int(info.mtime), epoch) if info.mtime else epoch
    info.uname = info.gname = ""
    info.pax_headers = {}
    return info


def _parents(names: Iterable[str]) -> list[str]:
    """Every folder above the given paths, outermost first (tar readers want folders before their files)."""
    folders: set[str] = set()
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) not in {".", "/", ""}:
                folders.add(str(parent))
    return sorted(folders, key=lambda p: (p.count("/"), p))


def layer_from_files(out: Path, entries: Sequence[FileEntry], *, epoch: int | None = None) -> Layer:
    """A layer holding exactly ``entries`` (plus their parent folders, root-owned 0755)."""
    epoch = source_date_epoch() if epoch is None else epoch
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [entry.name.lstrip("/") for entry in entries]
    explicit = {name.rstrip("/") for name in names if name.endswith("/")}
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for folder in _parents(names):
            if folder in explicit:
                continue
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(_normalise(info, epoch))
        for name, entry in sorted(zip(names, entries, strict=True), key=lambda pair: pair[0]):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, epoch
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(_normalise(info, epoch))
                continue
            if entry.symlink_to:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.symlink_to, 0o777
                tar.addfile(_normalise(info, epoch))
                continue
            data = entry.content if isinstance(entry.content, bytes) else entry.content.read_bytes()
            info.size = len(data)
            tar.addfile(_normalise(info, epoch), io.BytesIO(data))
    digest, size = _digest_file(out)
    return Layer(out, digest, size)


def layer_from_tree(
    out: Path,
    root: Path,
    *,
    prefix: str = "",
    epoch: int | None = None,
    include: Collection[str] | None = None,
    owner: tuple[int, int] | None = None,
    canonical_modes: bool = False,
) -> Layer:
    """A layer of everything under ``root`` (placed under ``prefix`` in the image), owners and modes kept.

    Walks in sorted order and never follows symlinks, so the tar is the same for the same tree; files
    that share an inode become hard links. ``include`` (paths relative to ``root``) keeps only those
    entries and the folders above them, which is how a layer holds just what a step added to a tree.
    ``owner`` replaces every uid/gid and ``canonical_modes`` every mode (0755 for folders and
    executables, 0644 otherwise), for trees copied from a checkout whose owner and umask vary.
    """
    epoch = source_date_epoch() if epoch is None else epoch
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix.strip("/")
    wanted = None if include is None else {*include, *_parents(include)}
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        if prefix:
            for folder in [*_parents([prefix]), prefix]:
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                tar.addfile(_normalise(info, epoch))
        for path in _walk(root, root, wanted):
            rel = path.relative_to(root).as_posix()
            arcname = f"{prefix}/{rel}" if prefix else rel
            info = _normalise(tar.gettarinfo(str(path), arcname), epoch)
            if owner is not None:
                info.uid, info.gid = owner
            if canonical_modes and not info.issym():
                info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    digest, size = _digest_file(out)
    return Layer(out, digest, size)


def _walk(root: Path, top: Path, wanted: set[str] | None) -> Iterable[Path]:
    """Every entry under ``root`` (not ``root`` itself), folders before their contents, sorted.

    With ``wanted`` (paths relative to ``top``), only those entries, and only wanted folders are entered.
    """
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        if wanted is not None and path.relative_to(top).as_posix() not in wanted:
            continue
        yield path
        if entry.is_dir(follow_symlinks=False) and not stat.S_ISLNK(entry.stat(follow_symlinks=False).st_mode):
            yield from _walk(path, top, wanted)


def _config_json(config: ImageConfig, layers: Sequence[Layer], epoch: int) -> bytes:
    created = _rfc3339(epoch)
    fields: dict[str, object | None] = {
        "Entrypoint": list(config.entrypoint) or None,
        "Cmd": list(config.cmd) or None,
        "Env": [f"{k}={v}" for k, v in config.env.items()] or None,
        "User": config.user or None,
        "WorkingDir": config.workdir or None,
        "Labels": dict(config.labels) or None,
        "ExposedPorts": {port: {} for port in config.exposed_ports} or None,
    }
    body: dict[str, object] = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {key: value for key, value in fields.items() if value is not None},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created": created, "created_by": "blacktop image build"} for _ in layers],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _rfc3339(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageArchive:
    """An OCI layout tar ready for ``ctr images import``: where, which name, which manifest."""

    path: Path
    name: str
    manifest_digest: str
    size: int


def _image_blobs(config: ImageConfig, layers: Sequence[Layer], epoch: int) -> tuple[bytes, bytes]:
    """The config and manifest blobs of an image: what its digest (the manifest's) is computed from."""
    config_blob = _config_json(config, layers, epoch)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": _sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": la.digest, "size": la.size} for la in layers],
    }
    return config_blob, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _sha256(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def read_archive(path: Path) -> ImageArchive | None:
    """The image an OCI layout tar written by :func:`write_archive` holds, or None if unreadable."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:  # index.json comes before the (large) layer blobs
                if member.name == "index.json":
                    handle = tar.extractfile(member)
                    index = json.loads(handle.read()) if handle else {}
                    break
            else:
                return None
        entry = index["manifests"][0]
        return ImageArchive(
            path, entry["annotations"]["io.containerd.image.name"], entry["digest"], path.stat().st_size
        )
    except (OSError, tarfile.TarError, ValueError, KeyError, IndexError):
        return None


def write_archive(
    out: Path,
    name: str,
    layers: Sequence[Layer],
    config: ImageConfig,
    *,
    epoch: int | None = None,
    reuse: bool = False,
) -> ImageArchive:
    """An OCI image layout tar of ``layers`` named ``name`` (``registry/repo:tag``), written atomically.

    ``reuse``: keep ``out`` as it is when it already holds this very image (same name, same manifest
    digest), which saves copying every layer again.
    """
    epoch = source_date_epoch() if epoch is None else epoch
    config_blob, manifest_blob = _image_blobs(config, layers, epoch)
    config_digest, manifest_digest = _sha256(config_blob), _sha256(manifest_blob)
    if (
        reuse
        and (existing := read_archive(out))
        and (existing.name, existing.manifest_digest) == (name, manifest_digest)
    ):
        return existing
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                # containerd names the imported image after this annotation; the OCI one is the tag.
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    small = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
        _blob(config_digest): config_blob,
        _blob(manifest_digest): manifest_blob,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for folder in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                tar.addfile(info)
            for arcname, data in sorted(small.items()):
                info = tarfile.TarInfo(arcname)
                info.size, info.mode, info.mtime = len(data), 0o644, epoch
                tar.addfile(info, io.BytesIO(data))
            for layer in sorted({la.digest: la for la in layers}.values(), key=lambda la: la.digest):
                info = tarfile.TarInfo(_blob(layer.digest))
                info.size, info.mode, info.mtime = layer.size, 0o644, epoch
                with layer.path.open("rb") as handle:
                    tar.addfile(info, handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ImageArchive(out, name, manifest_digest, out.stat().st_size)


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"
