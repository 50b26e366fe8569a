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
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except ssl.SSLError as e:
        raise TlsError(
            f"server.tls_cert_file / server.tls_key_file: {server.tls_cert_file} and {server.tls_key_file} are not a "
            f"PEM certificate chain and its unencrypted PEM private key ({e.reason or e})"
        ) from None
    return context
