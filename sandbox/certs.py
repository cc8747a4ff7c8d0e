"""Throwaway key material for the sandbox fakes.

Everything here is for tests and local demos only: a private test CA with one server
certificate for ``localhost``/127.0.0.1/::1, an APNs-style ES256 ``.p8`` signing key, and a
Google service-account JSON file whose ``token_uri`` points at the fake FCM's OAuth endpoint.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import ssl
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ApnsKey",
    "ServiceAccount",
    "TlsFiles",
    "client_ssl_context",
    "generate_apns_key",
    "generate_service_account",
    "generate_service_account_key",
    "generate_tls",
    "load_service_account",
    "server_ssl_context",
    "write_service_account",
]

_ALNUM = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ApnsKey:
    """An APNs token-auth signing key (``AuthKey_<key_id>.p8``) and its identifiers."""

    key_file: Path
    key_id: str
    team_id: str

    def private_key_pem(self) -> str:
        """The PKCS#8 PEM text, as in the .p8 file Apple hands out."""
        return self.key_file.read_text()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key_file} does not hold an EC private key")
        return key.public_key()


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A fake Google service account: the JSON file and the fields the fake FCM checks."""

    file: Path
    project_id: str
    client_email: str
    private_key_id: str
    token_uri: str
    public_key: rsa.RSAPublicKey


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    """From five minutes ago (a little clock skew) to `days` from now."""
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """KeyUsage with the flags named in `allowed` set, every other one clear."""
    flags = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{flag: flag in allowed for flag in flags})


def _certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
    validity: tuple[datetime.datetime, datetime.datetime],
    extensions: Iterable[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate for `public_key`, signed (SHA-256) by `issuer`'s key; `extensions` are
    (extension, critical) pairs in order."""
    issuer_name, issuer_key = issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _make_ca(
    common_name: str, validity: tuple[datetime.datetime, datetime.datetime]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A throwaway P-256 CA: key usage, basic constraints and SKI as strict verifiers want."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = _certificate(
        ca_name,
        ca_key.public_key(),
        (ca_name, ca_key),
        validity,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_key_usage("digital_signature", "key_cert_sign", "crl_sign"), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    return ca_key, ca_cert


def generate_tls(
    directory: str | os.PathLike[str],
    *,
    hostnames: Iterable[str] = ("localhost",),
    ip_addresses: Iterable[str] = ("127.0.0.1", "::1"),
    days: int = 30,
) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server-key.pem`` into ``directory``.

    The CA and the server key are P-256 (fast to make and to handshake). The server certificate
    carries SANs for ``hostnames`` and ``ip_addresses``, serverAuth EKU, and SKI/AKI so that
    strict verifiers (Python 3.13's default context) accept it.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    validity = _validity(days)
    ca_key, ca_cert = _make_ca("pn-relay sandbox test CA", validity)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    server_cert = _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        server_key.public_key(),
        (ca_cert.subject, ca_key),
        validity,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage("digital_signature", "key_agreement"), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(names), False),
            (x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False),
            (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False),
        ],
    )

    files = TlsFiles(
        ca_file=out / "ca.pem",
        cert_file=out / "server.pem",
        key_file=out / "server-key.pem",
    )
    files.ca_file.write_bytes(_pem(ca_cert))
    files.cert_file.write_bytes(_pem(server_cert))
    _write_private(files.key_file, _pkcs8_pem(server_key))
    return files


def server_ssl_context(tls: TlsFiles, alpn: Iterable[str] | None = ("h2",)) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``tls``.

    ALPN ``alpn`` is offered; clients that send no ALPN extension at all are still accepted
    (OpenSSL only consults the ALPN callback when the client offers protocols).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_ssl_context(tls: TlsFiles, alpn: Iterable[str] | None = None) -> ssl.SSLContext:
    """A verifying client context that trusts only the sandbox CA."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _random_id(length: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


@dataclass(frozen=True, slots=True)
class ApnsCertificate:
    """An APNs provider certificate (certificate + key in one PEM, as APNS_CERT_FILE takes)
    and the CA file a fake APNs trusts to accept it."""

    cert_file: Path
    ca_file: Path


def generate_apns_certificate(
    directory: str | os.PathLike[str], *, topic: str = "com.loki-project.loki-messenger"
) -> ApnsCertificate:
    """Write ``apns-client-ca.pem`` and ``apns-cert.pem`` (a client certificate whose UID is
    the topic, like Apple's, signed by that CA) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    validity = _validity(30)
    ca_key, ca_cert = _make_ca("pn-relay sandbox APNs CA", validity)
    client_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
        ]
    )
    client_cert = _certificate(
        subject,
        client_key.public_key(),
        (ca_cert.subject, ca_key),
        validity,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    files = ApnsCertificate(cert_file=out / "apns-cert.pem", ca_file=out / "apns-client-ca.pem")
    files.ca_file.write_bytes(_pem(ca_cert))
    _write_private(files.cert_file, _pem(client_cert) + _pkcs8_pem(client_key))
    return files


def generate_apns_key(
    directory: str | os.PathLike[str],
    *,
    key_id: str | None = None,
    team_id: str | None = None,
) -> ApnsKey:
    """Write an APNs-style ``AuthKey_<KEYID>.p8`` (P-256, PKCS#8 PEM) into ``directory``.

    ``key_id`` and ``team_id`` default to random 10-character identifiers like Apple's.
    """
    key_id = key_id or _random_id(10)
    team_id = team_id or _random_id(10)
    key = ec.generate_private_key(ec.SECP256R1())
    path = Path(directory) / f"AuthKey_{key_id}.p8"
    _write_private(path, _pkcs8_pem(key))
    return ApnsKey(key_file=path, key_id=key_id, team_id=team_id)


def generate_service_account_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key, as Google issues for service accounts."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_service_account(
    path: str | os.PathLike[str],
    *,
    private_key: rsa.RSAPrivateKey,
    token_uri: str,
    project_id: str,
    client_email: str | None = None,
    private_key_id: str | None = None,
) -> ServiceAccount:
    """Write a service-account JSON file in Google's format for ``private_key``."""
    client_email = client_email or f"firebase-adminsdk-sandbox@{project_id}.iam.gserviceaccount.com"
    private_key_id = private_key_id or secrets.token_hex(20)
    pem = _pkcs8_pem(private_key).decode()
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": pem,
        "client_email": client_email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + client_email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    target = Path(path)
    _write_private(target, json.dumps(document, indent=2).encode())
    return ServiceAccount(
        file=target,
        project_id=project_id,
        client_email=client_email,
        private_key_id=private_key_id,
        token_uri=token_uri,
        public_key=private_key.public_key(),
    )


def generate_service_account(
    path: str | os.PathLike[str],
    *,
    token_uri: str,
    project_id: str = "pn-relay-sandbox",
    client_email: str | None = None,
) -> ServiceAccount:
    """Generate an RSA key and write a service-account JSON file for it to ``path``."""
    return write_service_account(
        path,
        private_key=generate_service_account_key(),
        token_uri=token_uri,
        project_id=project_id,
        client_email=client_email,
    )


def load_service_account(path: str | os.PathLike[str]) -> ServiceAccount:
    """Read back a service-account JSON file (for trusting it in a fake FCM)."""
    target = Path(path)
    document = json.loads(target.read_text())
    key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{target} does not hold an RSA private key")
    return ServiceAccount(
        file=target,
        project_id=str(document["project_id"]),
        client_email=str(document["client_email"]),
        private_key_id=str(document["private_key_id"]),
        token_uri=str(document["token_uri"]),
        public_key=key.public_key(),
    )
