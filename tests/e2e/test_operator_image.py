"""The operator image as a runtime runs it: built by `blacktop image build`, unpacked from its OCI
archive the way a runtime does (index -> manifest -> config -> layers), and run with runc as the chart
runs the pod: the image's user, ENV and ENTRYPOINT, a read-only root, /tmp and the workspaces as
tmpfs, no capabilities, no network. Also: rebuilding gives the same layer digests.

Needs root (runc, the builder's chroot), mmdebstrap and the tool cache (`make tools`); the first build
takes a minute or two, later ones seconds. Everything it starts or writes lives in one temporary folder
removed at the end; runc removes each container's cgroup when it deletes the container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blacktop.localcluster import images, oci
from blacktop.toolbox import cache_dir
from helpers import REPO

# The first build of the image is cold (mmdebstrap, wheels): longer than the suite's default timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CGROUP_PREFIX = "blacktop-image-test-"


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    handle = tar.extractfile("blobs/" + digest.replace(":", "/"))
    assert handle is not None, f"{digest} is not in the archive"
    return handle.read()


@dataclass
class Unpacked:
    """An image archive unpacked like a runtime does it: its root filesystem and its config."""

    rootfs: Path
    config: dict[str, Any]


def unpack(archive: oci.ImageArchive, into: Path) -> Unpacked:
    rootfs = into / "rootfs"
    rootfs.mkdir()
    with tarfile.open(archive.path) as tar:
        index = json.loads(_blob_named(tar, "index.json"))
        [entry] = index["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == archive.name
        manifest = json.loads(_blob(tar, entry["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        layers = [layer["digest"] for layer in manifest["layers"]]
        assert config["rootfs"]["diff_ids"] == layers, "uncompressed layers: diff IDs are the layer digests"
        for digest in layers:
            layer = into / "layer.tar"
            layer.write_bytes(_blob(tar, digest))
            subprocess.run(["tar", "-xpf", str(layer), "--numeric-owner", "-C", str(rootfs)], check=True)
            layer.unlink()
    return Unpacked(rootfs, config["config"])


def _blob_named(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    assert handle is not None
    return handle.read()


class Runc:
    """Runs commands in an unpacked image with runc, with its state in a folder of its own."""

    def __init__(self, image: Unpacked, work: Path) -> None:
        self.image, self.bundle, self.state = image, work / "bundle", work / "runc-state"
        self.bundle.mkdir()
        self.state.mkdir()
        subprocess.run(["runc", "spec", "--bundle", str(self.bundle)], check=True)
        self.spec = json.loads((self.bundle / "config.json").read_text())

    def run(self, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """The image's ENTRYPOINT with ``args`` (its CMD when None), as the chart's pod runs it."""
        config = self.image.config
        return self.exec([*config.get("Entrypoint", []), *(config.get("Cmd", []) if args is None else args)])

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        return self.exec(["/bin/sh", "-c", script])

    def exec(self, argv: list[str], *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``argv`` in a new container as the image's user with its ENV, like the chart's pod."""
        config, name = self.image.config, f"{CGROUP_PREFIX}{uuid.uuid4().hex[:8]}"
        uid, _, gid = config["User"].partition(":")
        gid = gid or uid
        spec = json.loads(json.dumps(self.spec))
        spec["root"] = {"path": str(self.image.rootfs), "readonly": True}
        spec["process"].update(
            terminal=False,
            args=argv,
            env=config["Env"],
            cwd=config.get("WorkingDir") or "/",
            user={"uid": int(uid), "gid": int(gid)},
            noNewPrivileges=True,
            capabilities={key: [] for key in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        )
        # The chart's emptyDirs; everything else is read-only.
        for target, extra in (("/tmp", "mode=1777"), (images.WORKSPACES, f"uid={uid},gid={gid},mode=0755")):
            spec["mounts"].append(
                {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", extra]}
            )
        # One cgroup per container, directly under the roots: runc removes it when the container goes.
        spec["linux"]["cgroupsPath"] = f"/{name}"
        (self.bundle / "config.json").write_text(json.dumps(spec))
        try:
            return subprocess.run(
                ["runc", "--root", str(self.state), "run", "--bundle", str(self.bundle), name],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            subprocess.run(
                ["runc", "--root", str(self.state), "delete", "--force", name], capture_output=True, check=False
            )


def _test_cgroups() -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}*"))


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="blacktop-image-test-"))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def archive() -> oci.ImageArchive:
    return images.build_operator_image(progress=print)


@pytest.fixture(scope="module")
def runc(archive: oci.ImageArchive, work: Path) -> Iterator[Runc]:
    for stale in _test_cgroups():  # from a run that was killed: empty once its processes are gone
        stale.rmdir()
    runner = Runc(unpack(archive, work), work)
    yield runner
    left = subprocess.run(
        ["runc", "--root", str(runner.state), "list", "-q"], capture_output=True, text=True, check=False
    )
    assert not left.stdout.strip(), f"containers left behind: {left.stdout}"
    assert not _test_cgroups(), f"cgroups left behind: {_test_cgroups()}"


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_image_is_configured_as_the_chart_expects(archive: oci.ImageArchive, runc: Runc) -> None:
    config = runc.image.config
    assert archive.name == images.operator_image_name()
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["blacktop"]
    assert config["Cmd"] == ["run"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BLACKTOP_MODULES_ROOT"] == "/opt/blacktop/modules"
    assert env["BLACKTOP_CACHE_DIR"] == "/opt/blacktop/cache"


def test_blacktop_runs_as_its_user_on_a_read_only_root(runc: Runc) -> None:
    assert "run the operator in the foreground" in _ok(runc.run(["--help"]))
    probe = (
        "import json, os, pwd; from blacktop.config import Settings; s = Settings.from_env(); "
        "print(json.dumps({'uid': os.getuid(), 'user': pwd.getpwuid(os.getuid()).pw_name, 'home': os.environ['HOME'], "
        "'modules': str(s.modules_root), 'workspaces': str(s.workspace_root), "
        "'writable_root': os.access('/opt/blacktop', os.W_OK)}))"
    )
    facts = json.loads(_ok(runc.exec(["python", "-c", probe])))
    assert facts == {
        "uid": 65532,
        "user": "blacktop",
        "home": "/tmp",
        "modules": "/opt/blacktop/modules",
        "workspaces": "/var/lib/blacktop/workspaces",
        "writable_root": False,
    }


def test_every_dependency_and_its_native_code_loads(runc: Runc) -> None:
    # Importing the operator pulls in kopf, kubernetes, pydantic, cryptography, jsonschema, hcl2...;
    # evaluating CEL runs cel-expr-python's C++ extension (it needs the image's libstdc++).
    script = (
        "import kopf, kubernetes, yaml, cryptography.x509, pydantic_core; import blacktop.handlers.main; "
        "from blacktop.guardrails import cel; "
        "print(cel.Bindings({}).evaluate(cel.compile_expression('[1, 2, 3].size() + 1')), yaml.__with_libyaml__)"
    )
    assert _ok(runc.exec(["python", "-c", script])).split() == ["4", "True"]


def test_tofu_installs_the_shipped_modules_providers_from_the_mirror_offline(runc: Runc) -> None:
    version = re.search(r"^OPENTOFU_VERSION=(\S+)", (REPO / "hack/tools/versions.env").read_text(), re.MULTILINE)
    assert version
    assert f"OpenTofu {version.group(1)}" in _ok(runc.exec(["tofu", "version"]))
    modules = sorted(p.name for p in (REPO / "terraform-modules").iterdir() if p.is_dir())
    # As the operator runs tofu: the image's CLI config (TF_CLI_CONFIG_FILE), a workspace per module, a
    # local backend; the container has no network, so every provider must come from the mirror.
    script = "set -e; export TF_CLI_CONFIG_FILE=$BLACKTOP_CACHE_DIR/tofu.tfrc TF_IN_AUTOMATION=1\n"
    for module in modules:
        script += (
            f"cp -r $BLACKTOP_MODULES_ROOT/{module} $BLACKTOP_WORKSPACE_ROOT/{module}\n"
            f"tofu -chdir=$BLACKTOP_WORKSPACE_ROOT/{module} init -input=false -no-color >/dev/null\n"
            f"echo initialised {module}\n"
        )
    script += "tofu -chdir=$BLACKTOP_WORKSPACE_ROOT/tiny apply -auto-approve -input=false -no-color -var name=demo\n"
    output = _ok(runc.sh(script))
    assert [line.split()[1] for line in output.splitlines() if line.startswith("initialised ")] == modules
    assert "Apply complete! Resources: 1 added" in output


def test_bytecode_is_hash_checked_so_it_stays_valid_on_a_read_only_root(runc: Runc) -> None:
    rootfs = runc.image.rootfs
    site = rootfs / "opt/blacktop/venv/lib/python3.11/site-packages"
    pycs = [*site.rglob("*.pyc"), *(rootfs / "usr/lib/python3.11").rglob("*.pyc")]
    assert len(pycs) > 1000
    # PEP 552: bit 0 of the flags word marks a hash-based .pyc (valid whatever the layer's mtimes).
    timestamped = [p for p in pycs if not int.from_bytes(p.read_bytes()[4:8], "little") & 1]
    assert not timestamped, f"{len(timestamped)} timestamp-based .pyc files, e.g. {timestamped[:3]}"
    sources = {p.relative_to(site).with_suffix("") for p in (site / "blacktop").rglob("*.py")}
    compiled = {p.relative_to(site).parent.parent / p.name.split(".")[0] for p in (site / "blacktop").rglob("*.pyc")}
    assert sources == compiled, "every module of blacktop is shipped compiled"


def test_rebuilding_gives_the_same_layers(archive: oci.ImageArchive, work: Path) -> None:
    """deps, tools, app and pause built again in another cache: the same digests (base: see README)."""
    real, other = cache_dir(), work / "cache"
    (other / "bin").mkdir(parents=True)
    os.symlink(real / "bin/tofu", other / "bin/tofu")
    os.symlink(real / "bin/pause", other / "bin/pause")
    os.symlink(real / "terraform-mirror", other / "terraform-mirror")
    tfrc = (real / "tofu.tfrc").read_text().replace(str(real / "terraform-mirror"), str(other / "terraform-mirror"))
    (other / "tofu.tfrc").write_text(tfrc)
    # The Debian base comes from the mirror as it is today, so it is taken as built; everything on top
    # is rebuilt from scratch (the wheels are taken too: they are checked against the lock's hashes).
    layers = images.images_dir(other) / "layers"
    layers.mkdir(parents=True)
    for path in (images.images_dir(real) / "layers").glob("base-*"):
        shutil.copy(path, layers / path.name)
    shutil.copytree(images.images_dir(real) / "wheels", images.images_dir(other) / "wheels")
    lines: list[str] = []
    again = images.build_operator_image(other, out=work / "again.oci.tar", progress=lines.append)
    assert sum("built" in line for line in lines) == 3, lines  # deps, tools, app; base cached
    assert again.manifest_digest == archive.manifest_digest, "\n".join(lines)
    pause_lines: list[str] = []
    first, second = images.pause_image(), images.pause_image(other, out=work / "pause.tar", progress=pause_lines.append)
    assert any("built" in line for line in pause_lines)
    assert second.manifest_digest == first.manifest_digest
