"""Per-cluster TLS: a throw-away CA and one server certificate, made by the driver at start.

Why a CA per cluster rather than a self-signed server certificate: clients pin the CA, and the CA's
private key is dropped as soon as the server certificate is signed, so nothing can ever sign a
second certificate that a client of this cluster would accept (another cluster's server, a
man in the middle). The server's key is returned in memory only; providers hand it to the server
container the way they hand over the Redis password (a 0600 file on Docker, SSM SecureString on
ECS, a Secret on Kubernetes) and never write it anywhere on the driver's machine.

Subject alternative names hold every address a client uses (the name workers resolve, the address
the flow runner connects to, 127.0.0.1 for the server's own watchdog and port-forwards), so
clients keep hostname checking on. Validity is short (`DEFAULT_LIFETIME`): a cluster that outlives
it is refused by `check_not_expired` with a message that says what to do (see README).
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Iterable

DEFAULT_LIFETIME = 24 * 3600.0  # seconds; a flow run's cluster rarely lives a day
CLOCK_SKEW = 300  # seconds of back-dating: a server clock slightly behind still accepts the cert
ALWAYS_NAMES = ("127.0.0.1", "localhost")  # the server's watchdog, port-forwards


@dataclass(frozen=True)
class ClusterTLS:
    """One cluster's TLS material as PEM text; `repr` never shows the key."""

    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)
    not_after: float  # epoch seconds: the server certificate's expiry
    names: tuple[str, ...] = ()


class CertificateExpired(RuntimeError):
    """The cluster outlived its TLS certificate: new connections would be refused."""


def generate(cluster: str, names: Iterable[str], lifetime: float = DEFAULT_LIFETIME) -> ClusterTLS:
    """A fresh CA and a server certificate for `names` (IP addresses or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if lifetime <= 0:
        raise ValueError(f"tls_lifetime={lifetime} is invalid: it must be a positive number of seconds")
    wanted = list(dict.fromkeys([*ALWAYS_NAMES, *(n for n in names if n)]))
    sans: list[x509.GeneralName] = []
    for name in wanted:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(seconds=CLOCK_SKEW), now + datetime.timedelta(seconds=lifetime)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dockerparallel CA {cluster}"[:64])])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dp-{cluster}-server"[:64])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    del ca_key  # nothing can sign another certificate this cluster's clients accept
    pem = serialization.Encoding.PEM
    return ClusterTLS(
        ca_pem=ca.public_bytes(pem).decode(),
        cert_pem=cert.public_bytes(pem).decode(),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        not_after=end.timestamp(),
        names=tuple(wanted),
    )


def not_after(ca_pem: str) -> float:
    """Expiry (epoch seconds) of a cluster's CA certificate, which is the server certificate's."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(ca_pem.encode()).not_valid_after_utc.timestamp()


def check_not_expired(cluster: str, ca_pem: str | None, now: float | None = None) -> None:
    """Raise CertificateExpired when the cluster's certificate is past its validity."""
    if not ca_pem:
        return
    expiry = not_after(ca_pem)
    now = time.time() if now is None else now
    if now >= expiry:
        when = datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise CertificateExpired(
            f"cluster {cluster!r}: its TLS certificate expired at {when}, so no new connection to its "
            "Redis (a reconnect, a new worker) can be verified. Stop the cluster and start a new one "
            "(`prefect-dockerparallel clusters cleanup`), or give long-lived clusters a longer "
            "certificate lifetime on the provider (tls_lifetime_hours)"
        )
