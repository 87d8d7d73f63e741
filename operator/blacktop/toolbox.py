"""Where Blacktop finds the external binaries it runs (kube-apiserver, etcd, kubectl, tofu, ...).

`make tools` (hack/tools/install.sh) builds or installs them into one cache directory outside the
repository; everything that runs a tool asks this module for its path, so a missing tool is one clear
error that says how to get it, never a confusing `FileNotFoundError` deep in a subprocess call.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ToolMissingError(RuntimeError):
    """A binary Blacktop needs is neither in the tool cache nor on PATH."""


def cache_dir() -> Path:
    """The root of Blacktop's tool cache: ``$BLACKTOP_CACHE_DIR`` or ``$XDG_CACHE_HOME/blacktop``."""
    explicit = os.environ.get("BLACKTOP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "blacktop"


def bin_dir() -> Path:
    """Directory holding the binaries that `make tools` built."""
    return cache_dir() / "bin"


def find_tool(name: str) -> Path:
    """Return the path of tool ``name``, preferring the pinned build in the cache over PATH.

    The cache wins because its versions are the ones the project is tested with; PATH is the
    fallback for users who bring their own (``terraform``, a distro ``kubectl``).
    """
    cached = bin_dir() / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissingError(f"{name} not found in {bin_dir()} or on PATH; run `make tools` to build the pinned tools")
