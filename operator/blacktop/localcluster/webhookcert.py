"""The admission webhook's serving certificate: mounted files, or generated at start-up with `cryptography`.

Kopf can generate a self-signed certificate itself, but through ``oscrypto``, which fails on
OpenSSL 3; this reuses the control plane's own certificate code instead. With a cert dir (the Helm
chart mounts a Secret there) ``tls.crt``/``tls.key`` are served and ``ca.crt`` (else the certificate
itself) is the CA bundle the apiserver trusts.

A generated pair lives in a temp folder named after the operator's process (Kopf re-reads the
files to notice renewals, so they stay while it serves). The operator removes it at exit; one
killed with SIGKILL cannot, so each start first removes the folders of processes that are gone.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blacktop.localcluster import pki


@dataclass(frozen=True)
class ServingCert:
    """Files to serve and the CA bundle (PEM) to put into the webhook configuration."""

    certfile: Path
    keyfile: Path
    ca_pem: bytes

    @property
    def ca_bundle(self) -> str:
        """The CA in the base64 form ``clientConfig.caBundle`` wants."""
        return base64.b64encode(self.ca_pem).decode("ascii")


PREFIX = "blacktop-webhook-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: running
    return True


def sweep_stale(root: Path) -> list[Path]:
    """Remove this user's generated-certificate folders in ``root`` whose process is gone; the removed."""
    removed = []
    for folder in root.glob(f"{PREFIX}*-*"):
        pid = folder.name[len(PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and folder.stat().st_uid == os.getuid() and not _running(int(pid)):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def serving_cert(cert_dir: Path | None, hosts: tuple[str, ...]) -> ServingCert:
    """The mounted certificate in ``cert_dir``, or a fresh CA and certificate for ``hosts``."""
    if cert_dir is not None:
        cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
        missing = [str(p) for p in (cert, key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"webhook certificate files missing: {', '.join(missing)}")
        ca = cert_dir / "ca.crt"
        return ServingCert(cert, key, (ca if ca.is_file() else cert).read_bytes())
    root = Path(tempfile.gettempdir())
    sweep_stale(root)
    directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
    authority = pki.CertificateAuthority(directory, name="blacktop-webhook-ca")
    names = tuple(h for h in hosts if not _is_ip(h))
    ips = tuple(h for h in hosts if _is_ip(h))
    pair = authority.issue("tls", names[0] if names else ips[0], server_names=names, server_ips=ips, client=False)
    return ServingCert(pair.cert, pair.key, authority.pem)
