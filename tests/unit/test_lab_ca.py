"""The lab CA: created once, kept, and signs server certificates that verify against it."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lab import ca, config


@pytest.fixture(autouse=True)
def lab_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(config, "STATE_DIR", tmp_path / "state")
    return tmp_path


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_is_created_once_and_reused() -> None:
    cert_path = ca.ensure_ca()
    key_path = cert_path.with_name("ca.key")
    assert cert_path.parent == config.CACHE_DIR / "ca"
    assert _mode(key_path) == 0o600
    first = cert_path.read_bytes(), key_path.read_bytes()
    fingerprint = ca.ca_fingerprint()

    assert ca.ensure_ca() == cert_path
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first
    assert ca.ca_fingerprint() == fingerprint

    cert = x509.load_pem_x509_certificate(first[0])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert fingerprint == hashlib.sha256(der).hexdigest()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ca_survives_a_new_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = ca.ca_fingerprint()
    monkeypatch.setattr(config, "STATE_DIR", tmp_path / "another-lab")  # `lab down`, `lab up`
    assert ca.ca_fingerprint() == fingerprint


def test_server_cert_is_signed_by_the_ca_with_the_asked_names() -> None:
    cert_path, key_path = ca.issue_server_cert("spaces", ["198.18.0.1"], ["spaces.lab"])
    assert cert_path.parent == config.STATE_DIR / "tls"
    assert _mode(key_path) == 0o600
    assert _mode(cert_path.with_suffix(".pem")) == 0o600

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.ensure_ca().read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["spaces.lab"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.1")]

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    combined = cert_path.with_suffix(".pem").read_text()
    assert combined.count("BEGIN CERTIFICATE") == 2 and "PRIVATE KEY" in combined


def test_server_cert_is_reused_until_its_names_change() -> None:
    cert_path, _ = ca.issue_server_cert("lb-1", ["198.18.8.2"], [])
    first = cert_path.read_bytes()
    assert ca.issue_server_cert("lb-1", ["198.18.8.2"], [])[0].read_bytes() == first
    assert ca.issue_server_cert("lb-1", ["198.18.8.3"], [])[0].read_bytes() != first


def test_server_cert_is_reissued_for_a_new_ca() -> None:
    cert_path, _ = ca.issue_server_cert("spaces", ["198.18.0.1"], [])
    for f in (config.CACHE_DIR / "ca").glob("ca.*"):
        f.unlink()
    ca.issue_server_cert("spaces", ["198.18.0.1"], [])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ensure_ca().read_bytes()))


@pytest.mark.parametrize("name", ["", "../x", ".hidden"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        ca.issue_server_cert(name, ["198.18.0.1"], [])
