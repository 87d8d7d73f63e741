"""The admission webhook's serving certificate: mounted files, or generated at start-up with `cryptography`.

Kopf can generate a self-signed certificate itself, but through ``oscrypto``, which fails on
OpenSSL 3; this reuses the control plane's own certificate code instead. With a cert dir (the Helm
chart mounts a Secret there) ``tls.crt``/``tls.key`` are served and ``ca.crt`` (else the certificate
itself) is the CA bundle the apiserver trusts.
"""

from __future__ import annotations

import base64
import ipaddress
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
    directory = Path(tempfile.mkdtemp(prefix="blacktop-webhook-"))
    authority = pki.CertificateAuthority(directory, name="blacktop-webhook-ca")
    names = tuple(h for h in hosts if not _is_ip(h))
    ips = tuple(h for h in hosts if _is_ip(h))
    pair = authority.issue("tls", names[0] if names else ips[0], server_names=names, server_ips=ips, client=False)
    return ServingCert(pair.cert, pair.key, authority.pem)
