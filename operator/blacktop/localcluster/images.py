"""Images the local node runs, built here: the sandbox (pause) image.

The pause binary is compiled by `make tools` from the Kubernetes module's own pause.c into the tool
cache; its image archive is written next to it on first use (cached by the binary's digest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from blacktop.localcluster import oci
from blacktop.toolbox import cache_dir, find_tool

PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"


def images_dir() -> Path:
    """Where built image archives and layers are cached."""
    return cache_dir() / "images"


def pause_image() -> oci.ImageArchive:
    """The node's sandbox image (``registry.k8s.io/pause``), as an OCI archive in the cache."""
    binary = find_tool("pause")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    out = images_dir() / f"pause-{digest}.tar"
    if out.is_file():
        return oci.ImageArchive(out, PAUSE_IMAGE, "", out.stat().st_size)
    layer = oci.layer_from_files(
        images_dir() / "layers" / f"pause-{digest}.tar", [oci.FileEntry("pause", binary, 0o755)]
    )
    return oci.write_archive(out, PAUSE_IMAGE, [layer], oci.ImageConfig(entrypoint=["/pause"], user="65535:65535"))


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
