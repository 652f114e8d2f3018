"""TLS for the clients of isoperf: the broker (MQTT over TLS) and InfluxDB (HTTPS).

One way to build a client context, so that every client verifies the same way:
the server's certificate against the given CA (the hospital's) or the system's store,
its name against the host the client dialled, TLS 1.2 at least; a client certificate
and key where the server asks for one (a theatre gateway may authenticate by it).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A verifying client context; ``ValueError`` naming the file if one cannot be read."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot read the CA certificate {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read the client certificate {cert_file} or its key {key_file}: {exc}") from None
    return context


def probe(host: str, port: int, context: ssl.SSLContext | None, timeout_s: float = 3.0) -> str | None:
    """Why a connection to ``host:port`` failed at the TLS level, found by a fresh handshake; ``None``
    if TLS is not what failed. Blocking: run it in a thread, and only after a connection failed.

    A server that refuses the client's certificate does so after a TLS 1.3 handshake completes,
    so the client library only sees the connection close; this reads the alert the server sent.
    Without ``context`` it tells whether the server expects TLS where the client spoke plain TCP.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            if context is None:
                sniff = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                sniff.check_hostname = False
                sniff.verify_mode = ssl.CERT_NONE  # only to learn whether the server speaks TLS; nothing is sent
                try:
                    with sniff.wrap_socket(raw, server_hostname=host):
                        return "the server speaks TLS on this port; plain MQTT is refused"
                except (OSError, ssl.SSLError):
                    return None
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(timeout_s)
                tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return f"the server's certificate was refused: {exc.verify_message}"
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if "alert" in reason:
            return f"the server refused this client's certificate or its absence ({reason})"
        return f"TLS failed: {reason}"
    except (TimeoutError, OSError):
        return None
    return None
