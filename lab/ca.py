"""The lab's certificate authority.

The CA lives in CACHE_DIR so it survives `lab down`: golden images bake its certificate
in, and a new CA would make every cached image distrust the lab. Server certificates are
per lab and live in STATE_DIR.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab import config

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=397)  # the longest that clients still accept
RENEW_BEFORE = datetime.timedelta(days=30)


def _ca_dir() -> Path:
    return config.CACHE_DIR / "ca"


def _certs_dir() -> Path:
    return config.STATE_DIR / "tls"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with the final mode from the start, so a key is never world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers (the image build and the API may both ask for the CA)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca() -> Path:
    """Create the CA once; afterwards return the existing one. Returns the cert PEM path."""
    cert_path, key_path = _ca_dir() / "ca.crt", _ca_dir() / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path
    with _locked(_ca_dir()):
        if cert_path.exists() and key_path.exists():
            return cert_path
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lifeboat lab CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write(key_path, _key_pem(key), 0o600)  # key first: a cert without its key is useless
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def _load_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path = ensure_ca()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key((_ca_dir() / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def ca_fingerprint() -> str:
    """SHA-256 of the CA certificate (DER), hex: a cache key for images that trust it."""
    cert, _ = _load_ca()
    return cert.fingerprint(hashes.SHA256()).hex()


def _sans(ips: list[str], dns: list[str]) -> list[x509.GeneralName]:
    return [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]


def _still_good(cert_path: Path, ca: x509.Certificate, wanted: list[x509.GeneralName]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca)  # a recreated CA has the same name, not the key
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        set(san) == set(wanted)
        and cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE
    )


def issue_server_cert(name: str, ips: list[str], dns: list[str]) -> tuple[Path, Path]:
    """Issue (or reuse, if it still matches) a TLS server certificate signed by the lab CA.

    Returns (cert, key) paths under STATE_DIR/tls; `<name>.pem` beside them holds
    cert + CA + key in one file, as HAProxy's `crt` wants it.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad certificate name {name!r}")
    if not ips and not dns:
        raise ValueError("a server certificate needs at least one IP or DNS name")
    ca_cert, ca_key = _load_ca()
    d = _certs_dir()
    cert_path, key_path, pem_path = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.pem"
    wanted = _sans(ips, dns)
    with _locked(d):
        if _still_good(cert_path, ca_cert, wanted) and key_path.exists() and pem_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + SERVER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert_pem, 0o644)
        _write(pem_path, cert_pem + ca_pem + _key_pem(key), 0o600)
    return cert_path, key_path
