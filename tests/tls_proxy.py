"""TLS endpoints on loopback for tests: a private CA and a server certificate made at test
time, and a proxy that terminates TLS and forwards plain bytes to a real server.

The shared servers here speak plaintext and their configuration is not ours to change, so
TLS is put in front of them: RabbitMQ (AMQPS), its management API (HTTPS) and the S3 server
(HTTPS) get TLS from the first byte; PostgreSQL starts TLS inside its own protocol (the
client's SSLRequest, answered `S`), which `postgres=True` speaks before forwarding.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.faults.proxy import TcpProxy

# PostgreSQL's SSLRequest: length 8, then the code 1234 5679.
SSL_REQUEST = struct.pack("!II", 8, 80877103)


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server's certificate (PEM)
    other_ca: Path  # a CA that did not: trusting only it must fail
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_pki(directory: Path) -> Pki:
    """A CA, a certificate it signs for `localhost` and 127.0.0.1, and an unrelated CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca, ca_key = _ca("cartridge test CA", now)
    other, _ = _ca("cartridge other CA", now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return pki


class TlsProxy(TcpProxy):
    """Clients speak TLS to `address`; the target gets the plain bytes. `connections`
    counts only connections whose TLS handshake succeeded: each one forwarded, so 0 after
    a refused handshake means nothing reached the server."""

    end_together = True

    def __init__(self, target_host: str, target_port: int, context: ssl.SSLContext, *, postgres: bool = False):
        super().__init__(target_host, target_port)
        self.context, self.postgres = context, postgres

    async def start(self) -> "TlsProxy":
        # Direct TLS: asyncio calls `_accept` only once the handshake is done.
        self._server = await asyncio.start_server(
            self._tls_accept if self.postgres else self._accept, "127.0.0.1", self.port,
            ssl=None if self.postgres else self.context, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _tls_accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """PostgreSQL: answer the SSLRequest with `S`, take the TLS handshake, then
        forward what follows (the startup message on) to the plain server. A client that
        does not ask for TLS is turned away: this endpoint is TLS only."""
        try:
            if await client_r.readexactly(len(SSL_REQUEST)) != SSL_REQUEST:
                client_w.transport.abort()
                return
            client_w.write(b"S")
            await client_w.drain()
            await client_w.start_tls(self.context)
        except (OSError, asyncio.IncompleteReadError):  # ssl.SSLError is an OSError
            client_w.transport.abort()
            return
        await self._accept(client_r, client_w)
