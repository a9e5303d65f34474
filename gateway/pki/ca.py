"""A small X.509 CA (ECDSA P-256) for the broker's TLS and for client certificates.

Files: `ca.crt` (give it to every car and gateway: they verify the broker with it), `ca.key`
(mode 0600; only the provisioning host needs it), `server.crt` and `server.key` (the broker's;
its name and address are in the subject alternative names, which clients check).

Private keys are written mode 0600 and never logged; an existing CA is never overwritten (every
car trusting it would have to be re-provisioned).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import GatewayError

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "PkiError",
    "PkiFiles",
    "init_pki",
    "write_private",
    "write_public",
]

_ORGANISATION = "tgw"
_CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid a little before "now": clocks differ


class PkiError(GatewayError):
    """A certificate or key cannot be created, read or written (the message says which)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write a private key mode 0600 from the first byte (atomically when replacing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise PkiError(
                f"{path} exists already: move it away or choose another directory"
            ) from exc
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate (public) atomically, mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate and its private key, PEM encoded."""

    common_name: str
    serial_number: int
    not_after: datetime.datetime
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def write(self, cert_path: Path, key_path: Path, *, replace: bool = False) -> None:
        """Write the certificate (0644) and key (0600)."""
        write_private(key_path, self.key_pem, replace=replace)
        write_public(cert_path, self.cert_pem)


class CertificateAuthority:
    """The CA's certificate and private key: issues server and client certificates."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._certificate = certificate
        self._key = key

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def cert_pem(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, common_name: str = "tgw CA", *, days: int = 3650) -> CertificateAuthority:
        """A new self-signed CA (path length 0: it signs end-entity certificates only)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = _name(common_name)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """Read the CA from its files; the key must be readable by its owner only.

        Raises:
            PkiError: a file is missing, unreadable, too open, or not an EC CA.
        """
        try:
            mode = key_file.stat().st_mode
            key_data = key_file.read_bytes()
            cert_data = cert_file.read_bytes()
        except OSError as exc:
            raise PkiError(
                f"cannot read the CA ({cert_file}, {key_file}): {exc.strerror}; "
                "create one with `tgw pki init --out DIR`"
            ) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PkiError(
                f"the CA key {key_file} is accessible to other users "
                f"(mode {stat.S_IMODE(mode):04o}): run `chmod 600 {key_file}`"
            )
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
            certificate = x509.load_pem_x509_certificate(cert_data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PkiError(f"the CA files are not PEM ({exc.__class__.__name__})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{key_file} is not an EC private key")
        if certificate.public_key() != key.public_key():
            raise PkiError(f"{key_file} is not the key of {cert_file}")
        return cls(certificate, key)

    def issue(
        self,
        common_name: str,
        *,
        days: int,
        server_names: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A certificate for a server (when `server_names` are given) or a client.

        Args:
            common_name: a car's VIN (the broker can take it as the username), or a host.
            days: validity.
            server_names: DNS names and IP addresses clients will connect to (servers only).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_alt_names(server_names)), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            common_name,
            certificate.serial_number,
            certificate.not_valid_after_utc,
            certificate.public_bytes(serialization.Encoding.PEM),
            _key_pem(key),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the CA's certificate and key (0600); never over existing files."""
        write_private(key_path, _key_pem(self._key))
        write_public(cert_path, self.cert_pem)


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """What `init_pki` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_names: tuple[str, ...]


def init_pki(
    out_dir: Path,
    *,
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    ca_days: int = 3650,
    server_days: int = 397,
) -> PkiFiles:
    """Create the CA and the broker's server certificate in `out_dir`.

    Raises:
        PkiError: a file exists already (an existing CA is never replaced) or no server name.
    """
    if not server_names:
        raise PkiError("the server certificate needs at least one name: --server-name HOST")
    files = PkiFiles(
        out_dir / "ca.crt",
        out_dir / "ca.key",
        out_dir / "server.crt",
        out_dir / "server.key",
        tuple(server_names),
    )
    for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
        if path.exists():
            raise PkiError(f"{path} exists already: the CA is never replaced; use another --out")
    ca = CertificateAuthority.create(days=ca_days)
    ca.write(files.ca_cert, files.ca_key)
    server = ca.issue(server_names[0], days=server_days, server_names=server_names)
    server.write(files.server_cert, files.server_key)
    return files
