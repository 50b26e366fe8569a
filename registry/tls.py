"""TLS serving: `[server] tls_cert_file` and `tls_key_file` make Moorage answer HTTPS on its listening socket
(every worker loads the same files)."""

from __future__ import annotations

import ssl

from registry.config import ServerConfig


class TlsError(Exception):
    """The TLS certificate or key cannot be used; the message says which file and why."""


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from `tls_cert_file` (a PEM chain, the server's certificate first) and
    `tls_key_file` (its unencrypted PEM private key); None for plain HTTP."""
    if not server.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for key in ("tls_cert_file", "tls_key_file"):
        path = getattr(server, key)
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TlsError(f"server.{key}: cannot read {path}: {e.strerror}") from None
    try:
        # A password callback, so that an encrypted key fails here instead of OpenSSL prompting on the terminal.
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file, password=_no_password)
    except (ssl.SSLError, _Encrypted) as e:
        raise TlsError(_diagnose(server.tls_cert_file, server.tls_key_file, e)) from None
    return context


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted


def _diagnose(cert_file: str, key_file: str, error: Exception) -> str:
    """Why OpenSSL refused the pair, in the operator's terms (read again with `cryptography`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_key = "server.tls_cert_file"
    try:
        with open(cert_file, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return f"{cert_key}: {cert_file} is not a PEM certificate chain (-----BEGIN CERTIFICATE----- blocks)"
    if isinstance(error, _Encrypted):
        return f"server.tls_key_file: {key_file} is encrypted; give its unencrypted PEM form (openssl pkey -in it)"
    try:
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except TypeError:  # encrypted after all
        return f"server.tls_key_file: {key_file} is encrypted; give its unencrypted PEM form (openssl pkey -in it)"
    except (OSError, ValueError):
        return f"server.tls_key_file: {key_file} is not a PEM private key (-----BEGIN PRIVATE KEY----- or similar)"
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = key.public_key().public_bytes(*der)
    owners = [i for i, cert in enumerate(certs, 1) if cert.public_key().public_bytes(*der) == public]
    if 1 not in owners:
        hint = f" (it is the key of certificate {owners[0]} there: the server's must come first)" if owners else ""
        return f"server.tls_key_file: {key_file} is not the private key of the first certificate in {cert_file}{hint}"
    reason = getattr(error, "reason", None) or error
    return f"{cert_key} / server.tls_key_file: {cert_file} and {key_file} cannot be used together ({reason})"
