"""Unpacking a git archive: the same rules with and without tarfile's filters (Python < 3.11.4 has
none; Debian 12's 3.11.2, the operator image's Python, is one)."""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest

from blacktop.terraform.sources import _extract_data


def archive(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode = kind, link, mode
    return member


@pytest.fixture(params=["filters", "no filters"])
def without_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "no filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)


@pytest.mark.usefixtures("without_filters")
def test_a_plain_tree_is_unpacked_without_set_id_bits(tmp_path: Path) -> None:
    path = archive(
        tmp_path,
        (info("m/main.tf", mode=0o4755), b'output "x" { value = 1 }\n'),
        (info("m/link.tf", tarfile.SYMTYPE, "main.tf"), None),
    )
    with tarfile.open(path) as tar:
        _extract_data(tar, tmp_path / "out")
    assert (tmp_path / "out" / "m" / "main.tf").read_text().startswith("output")
    assert (tmp_path / "out" / "m" / "link.tf").resolve() == (tmp_path / "out" / "m" / "main.tf").resolve()
    assert (tmp_path / "out" / "m" / "main.tf").stat().st_mode & 0o7000 == 0


@pytest.mark.usefixtures("without_filters")
@pytest.mark.parametrize(
    "member",
    [
        info("m/out.tf", tarfile.SYMTYPE, "../../etc/passwd"),
        info("m/abs.tf", tarfile.SYMTYPE, "/etc/passwd"),
        info("../escape.tf"),
        info("m/dev", tarfile.CHRTYPE),
    ],
    ids=["link out", "absolute link", "dot-dot", "device"],
)
def test_anything_leaving_the_destination_is_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    path = archive(tmp_path, (member, b"" if member.isfile() else None))
    with tarfile.open(path) as tar, pytest.raises(tarfile.TarError):
        _extract_data(tar, tmp_path / "out")
    assert not (tmp_path / "escape.tf").exists()


@pytest.mark.usefixtures("without_filters")
def test_an_absolute_path_never_lands_outside_the_destination(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.tf"
    path = archive(tmp_path, (info(str(outside)), b"x"))
    # The data filter strips the leading slash; the check without filters refuses the member.
    with tarfile.open(path) as tar, contextlib.suppress(tarfile.TarError):
        _extract_data(tar, tmp_path / "out")
    assert not outside.exists()
