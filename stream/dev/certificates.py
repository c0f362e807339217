"""Test certificates: a private CA and a server certificate it signed, made with ``openssl``
(valid two days, nothing to keep), for the Kafka and Redis that refuse plain connections
(`stream.dev.secure`, `stream.dev.redis_ha`)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ServiceError


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA's certificate, and the server's certificate and (unencrypted) key."""

    ca: Path
    cert: Path
    key: Path

    @property
    def keystore(self) -> Path:
        """The server's key then its certificate, one PEM file (Kafka's PEM keystore)."""
        return self.cert.with_name("keystore.pem")


def _openssl(*argv: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServiceError("openssl is needed to make test certificates: install Debian's openssl")
    result = subprocess.run([openssl, *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"openssl {argv[0]} failed: {result.stderr[-1000:]}")


def make_certificates(home: Path, addresses: Sequence[str] = ("127.0.0.1",)) -> Certificates:
    """A CA and a server certificate for ``addresses`` (IP subject alternative names, and
    ``localhost``) in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (home / n for n in ("ca.key", "ca.pem", "server.key",
                                                     "server.csr", "server.pem"))  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", "/CN=riverstream test CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=riverstream test server")  # fmt: skip
    names = ",".join([*(f"IP:{a}" for a in addresses), "DNS:localhost"])
    extensions = home / "server.ext"
    extensions.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2",
             "-extfile", str(extensions))  # fmt: skip
    found = Certificates(ca, cert, key)
    found.keystore.write_text(key.read_text() + cert.read_text())
    for secret in (ca_key, key, found.keystore):
        secret.chmod(0o600)
    return found
