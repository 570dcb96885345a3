"""TLS to RabbitMQ, PostgreSQL and S3: the client context a private CA needs, and telling
a certificate that is not trusted from a server that is not there.

Which connection uses TLS is said by its URL (`amqps://`, `https://`, PostgreSQL's
`sslmode`); the CA file is a setting of its own where the URL cannot carry one
(`broker.ca_file`, `storage.s3_ca_file`; PostgreSQL's `sslrootcert` is in its URL). A
certificate that fails verification is never retried as plaintext: it is an error
naming the endpoint and the setting that would make it trusted, and at start-up it is
not retried at all (waiting will not make it trusted).
"""

from __future__ import annotations

import ssl


def client_context(ca_file: str) -> ssl.SSLContext | None:
    """A verifying client context (chain and host name) trusting only the CA
    certificates in `ca_file` (PEM); None when `ca_file` is empty, so that the library's
    default (the system's trust store) applies."""
    if not ca_file:
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)


def certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc`, if that is what it is: client
    libraries wrap it (aiormq in `AMQPConnectionError`, aiohttp in
    `ClientConnectorCertificateError`, botocore in its `SSLError`), so the chain of causes
    is searched."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # aiohttp's wrapper is itself a CertificateError, with the real one as an attribute.
        inner = getattr(exc, "certificate_error", None)
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def untrusted(what: str, error: ssl.SSLCertVerificationError, setting: str) -> str:
    """One line for an endpoint whose certificate is not trusted: what was refused, why
    (OpenSSL's reason), and the setting that names the CA to trust."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
    return (f"{what}: TLS certificate not trusted ({reason}); if it is signed by a private CA, "
            f"set {setting} to that CA's certificate (PEM)")
