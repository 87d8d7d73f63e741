"""The operator image without Docker: the builder and the Dockerfile make the same image, the lock files
pin what pyproject.toml asks for, and OCI layers are byte-for-byte reproducible.

The image itself (built, then run with runc) is tested in tests/e2e/test_operator_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from blacktop.localcluster import images, oci
from helpers import REPO

pytestmark = pytest.mark.unit

HACK_IMAGE = REPO / "hack/image"


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments) with continuations joined, per stage."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#")))
    stages: list[list[tuple[str, str]]] = [[]]
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def _runtime_stage() -> list[tuple[str, str]]:
    return _stages((REPO / "Dockerfile").read_text())[-1]


def _pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def test_dockerfile_runtime_config_is_the_builders() -> None:
    stage = _runtime_stage()
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(_pairs(args))
        elif instruction == "LABEL":
            labels.update(_pairs(args))
    values = dict(stage)
    config = images.operator_image_config()
    assert env == dict(config.env), "ENV of the Dockerfile and images.OPERATOR_ENV differ"
    assert labels == dict(config.labels)
    assert values["USER"] == config.user
    assert json.loads(values["ENTRYPOINT"]) == list(config.entrypoint)
    assert json.loads(values["CMD"]) == list(config.cmd)
    assert tuple(f"{port}/tcp" for port in values["EXPOSE"].split()) == tuple(config.exposed_ports)


def test_dockerfile_copies_what_the_builder_lays_out() -> None:
    copied = {args.split()[-1].rstrip("/") for instruction, args in _runtime_stage() if instruction == "COPY"}
    cache = images.TOOL_CACHE
    assert copied == {
        images.VENV,
        f"{cache}/bin/tofu",
        f"{cache}/terraform-mirror",
        f"{cache}/tofu.tfrc",
        images.MODULES,
    }
    env = images.OPERATOR_ENV
    assert env["BLACKTOP_CACHE_DIR"] == cache
    assert env["BLACKTOP_MODULES_ROOT"] == images.MODULES
    assert env["PATH"].startswith(f"{images.VENV}/bin:{cache}/bin:")


def test_dockerfile_builds_from_the_builders_files() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    # The same Debian packages, dpkg excludes, user setup, lock and virtualenv script as `make image`.
    for name in ("packages.txt", "dpkg.cfg", "setup-base.sh", "requirements.lock", "build-requirements.lock"):
        assert f"hack/image/{name}" in dockerfile, f"the Dockerfile does not use hack/image/{name}"
    assert "sh /build/install-venv.sh deps /build/wheels /build/requirements.lock" in dockerfile
    assert "sh /build/install-venv.sh app /build/wheels /src" in dockerfile
    assert "COPY operator/ /src/operator/" in dockerfile
    assert "COPY pyproject.toml README.md /src/" in dockerfile
    assert "--require-hashes" in dockerfile
    # The builder installs the same package set (mmdebstrap --include) from the same file.
    assert images._package_list(HACK_IMAGE / "packages.txt") == ["python3", "ca-certificates", "libstdc++6", "git"]


def test_dockerfile_tools_stage_builds_every_provider_of_install_sh() -> None:
    install = (REPO / "hack/tools/install.sh").read_text()
    default = re.search(r"\|\| wanted=\(([^)]*)\)", install)
    assert default, "install.sh has no default tool list"
    # The image ships the tool cache's whole mirror: a provider install.sh builds but the Dockerfile
    # does not would be in `make image`'s image and missing from Docker's.
    mirror_tools = {t for t in default.group(1).split() if t in {"tofu", "providers"} or t.startswith("provider-")}
    tools_arg = re.search(r'^ARG TOOLS="([^"]*)"', (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert tools_arg
    assert mirror_tools == set(tools_arg.group(1).split())


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """Package name -> (pinned version, number of hashes) of a uv/pip-compile lock file."""
    found: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[a-z0-9])", path.read_text()):
        pin = re.match(r"([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)", block)
        if pin:
            found[pin.group(1)] = (pin.group(2), block.count("--hash=sha256:"))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    locked = {_normal(name): pin for name, pin in _locked(HACK_IMAGE / "requirements.lock").items()}
    assert len(locked) > 20
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = _normal(requirement.name)
        assert name in locked, f"{name} is not in hack/image/requirements.lock: run `make image-lock`"
        version, _ = locked[name]
        assert requirement.specifier.contains(version), f"{name}=={version} does not satisfy {spec}: `make image-lock`"
    assert all(hashes for _, hashes in locked.values()), "every pin needs its hashes (--generate-hashes)"
    # Dev tools never reach the image.
    assert not {"pytest", "mypy", "ruff", "uv"} & set(locked)


def test_build_lock_pins_pip_and_setuptools() -> None:
    locked = _locked(HACK_IMAGE / "build-requirements.lock")
    assert set(locked) == {"pip", "setuptools"}
    assert all(hashes for _, hashes in locked.values())
    assert Requirement("setuptools>=77").specifier.contains(locked["setuptools"][0])


def test_image_is_named_after_the_charts_app_version() -> None:
    chart = (REPO / "charts/blacktop/Chart.yaml").read_text()
    app_version = re.search(r'^appVersion: "?([^"\n]+)"?$', chart, re.MULTILINE)
    assert app_version
    assert images.operator_image_name() == f"ghcr.io/blacktop-dev/blacktop:{app_version.group(1)}"


def test_local_leftovers_stay_out_of_the_image() -> None:
    for junk in (
        "terraform-modules/tiny/.terraform/providers/x",
        "operator/blacktop/__pycache__/cli.cpython-311.pyc",
        "terraform-modules/tiny/terraform.tfstate.backup",
        "operator/blacktop.egg-info/PKG-INFO",
    ):
        assert images._ignored(Path(junk)), junk
    assert not images._ignored(Path("terraform-modules/tiny/main.tf"))
    dockerignore = (REPO / ".dockerignore").read_text()
    for pattern in ("**/__pycache__", "**/.terraform", "**/*.tfstate*", "**/*.egg-info"):
        assert pattern in dockerignore


def _fake_tool_cache(cache: Path, provider: bytes) -> None:
    (cache / "bin").mkdir(parents=True)
    (cache / "bin/tofu").write_bytes(b"tofu binary")
    (cache / "bin/tofu").chmod(0o755)
    for host in ("registry.opentofu.org", "registry.terraform.io"):
        folder = cache / f"terraform-mirror/{host}/hashicorp/random/3.9.0/linux_amd64"
        folder.mkdir(parents=True)
        (folder / "terraform-provider-random_v3.9.0").write_bytes(provider)
    mirror = cache / "terraform-mirror"
    (cache / "tofu.tfrc").write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'
    )


def test_tools_layer_points_tofu_at_the_images_mirror_and_stores_each_provider_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _fake_tool_cache(cache, provider=b"\x7fELF" + b"p" * 200_000)
    lines: list[str] = []
    with images._Build.open(cache, REPO, lines.append, "operator") as build:
        layer = build.layer("tools", build.tools_inputs(), build.make_tools, "tools")
        again = build.layer("tools", build.tools_inputs(), build.make_tools, "tools")
    assert again == layer
    assert "cached" in lines[-1]
    assert layer.size < 250_000, "the two copies of the provider must be one file and a hard link"
    with tarfile.open(layer.path) as tar:
        tfrc = tar.extractfile("opt/blacktop/cache/tofu.tfrc").read().decode()  # type: ignore[union-attr]
        links = [m for m in tar.getmembers() if m.islnk()]
        assert tar.getmember("opt/blacktop/cache/bin/tofu").mode == 0o755
    assert 'path = "/opt/blacktop/cache/terraform-mirror"' in tfrc
    assert str(cache) not in tfrc
    assert [m.name.split("/")[4] for m in links] == ["registry.terraform.io"]
    # Another provider build is another key: the layer is rebuilt, and the old one pruned later.
    (
        cache
        / "terraform-mirror/registry.opentofu.org/hashicorp/random/3.9.0/linux_amd64/terraform-provider-random_v3.9.0"
    ).write_bytes(b"new")
    with images._Build.open(cache, REPO, lines.append, "operator") as build:
        assert build.layer("tools", build.tools_inputs(), build.make_tools, "tools").digest != layer.digest
    assert not list((cache / "images/tmp/operator").iterdir()), "the work folder is removed"


def test_tools_layer_refuses_a_tool_cache_without_tofu(tmp_path: Path) -> None:
    with (
        images._Build.open(tmp_path, REPO, print, "operator") as build,
        pytest.raises(images.ImageBuildError, match="make tools"),
    ):
        build.tools_inputs()


# -- oci.py: reproducible layers and archives -----------------------------------------------------------


def _tree(root: Path, *, mode: int, mtime: int) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\n")
    (root / "bin/tool").chmod(0o700 if mode == 0o700 else 0o755)
    (root / "data.txt").write_text("same content")
    (root / "copy.txt").write_text("same content")
    (root / "data.txt").chmod(mode & 0o666)
    for path in [root / "bin/tool", root / "data.txt", root / "copy.txt", root / "bin"]:
        os.utime(path, (mtime, mtime))
    return root


def test_layers_of_equal_trees_are_identical_whatever_mtimes_modes_and_owners(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", mode=0o755, mtime=2_000_000_000)  # after the epoch: clamped
    two = _tree(tmp_path / "two", mode=0o700, mtime=2_100_000_000)  # another umask, another day
    kw = {"epoch": 1_700_000_000, "owner": (0, 0), "canonical_modes": True}
    a = oci.layer_from_tree(tmp_path / "a.tar", one, **kw)  # type: ignore[arg-type]
    b = oci.layer_from_tree(tmp_path / "b.tar", two, **kw)  # type: ignore[arg-type]
    assert a.digest == b.digest
    assert a.path.read_bytes() == b.path.read_bytes()
    with tarfile.open(a.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/tool"].mode == 0o755
    assert members["data.txt"].mode == 0o644
    assert {m.mtime for m in members.values()} == {1_700_000_000}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
    # Without normalisation the modes differ, and so do the digests.
    c = oci.layer_from_tree(tmp_path / "c.tar", two, epoch=1_700_000_000, owner=(0, 0))
    assert c.digest != a.digest


def test_a_layer_can_hold_only_what_a_step_added(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt/app/lib").mkdir(parents=True)
    (root / "opt/app/lib/new.py").write_text("x = 1\n")
    (root / "etc").mkdir()
    (root / "etc/untouched").write_text("base layer file")
    layer = oci.layer_from_tree(tmp_path / "l.tar", root, include={"opt/app/lib/new.py"}, epoch=1)
    with tarfile.open(layer.path) as tar:
        names = tar.getnames()
    assert names == ["opt", "opt/app", "opt/app/lib", "opt/app/lib/new.py"]  # parents first, nothing else


def test_identical_files_sharing_an_inode_are_stored_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a/provider").write_bytes(b"\0" * 100_000)
    (root / "b").mkdir()
    (root / "b/provider").hardlink_to(root / "a/provider")
    layer = oci.layer_from_tree(tmp_path / "l.tar", root, epoch=1)
    assert layer.size < 150_000
    with tarfile.open(layer.path) as tar:
        link = tar.getmember("b/provider")
        assert link.islnk()
        assert link.linkname == "a/provider"


def test_archive_is_an_oci_layout_naming_the_image_and_is_reused_when_unchanged(tmp_path: Path) -> None:
    layer = oci.layer_from_files(tmp_path / "l.tar", [oci.FileEntry("pause", b"\x7fELF", mode=0o755)], epoch=1)
    config = oci.ImageConfig(entrypoint=["/pause"], user="65535:65535")
    out = tmp_path / "pause.oci.tar"
    archive = oci.write_archive(out, "registry.k8s.io/pause:3.10.1", [layer], config, epoch=1)
    assert oci.read_archive(out) == archive
    with tarfile.open(out) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest_name = "blobs/" + archive.manifest_digest.replace(":", "/")
        manifest = json.loads(tar.extractfile(manifest_name).read())  # type: ignore[union-attr]
        config_blob = json.loads(tar.extractfile("blobs/" + manifest["config"]["digest"].replace(":", "/")).read())  # type: ignore[union-attr]
        assert tar.getmember("blobs/" + layer.digest.replace(":", "/")).size == layer.size
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "registry.k8s.io/pause:3.10.1"
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "3.10.1"
    assert config_blob["rootfs"]["diff_ids"] == [layer.digest]
    assert config_blob["config"] == {"Entrypoint": ["/pause"], "User": "65535:65535"}
    # Same image again: the file is kept as it is; another config: rewritten.
    before = out.stat().st_mtime_ns
    assert oci.write_archive(out, archive.name, [layer], config, epoch=1, reuse=True) == archive
    assert out.stat().st_mtime_ns == before
    other = oci.write_archive(
        out, archive.name, [layer], oci.ImageConfig(entrypoint=["/pause", "-v"]), epoch=1, reuse=True
    )
    assert other.manifest_digest != archive.manifest_digest
    assert oci.read_archive(out) == other


def test_unreadable_archive_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    assert oci.read_archive(tmp_path / "junk.tar") is None
    assert oci.read_archive(tmp_path / "missing.tar") is None
