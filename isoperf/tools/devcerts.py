"""``isoperf dev-certs``: a development CA and the certificates of the compose stack and the tests.

For development and testing only: in production the hospital's CA issues the broker's,
InfluxDB's and Grafana's certificates and those of the theatre gateways (docs/security.md).
Writes, into one directory:

* ``ca.crt`` / ``ca.key``: the CA (``ca.key`` never leaves the machine that made it);
* ``server.crt`` / ``server.key``: one server certificate for every name given
  (``mosquitto``, ``influxdb``, ``grafana``, ``rabbitmq-1..3``, ``localhost``, ``127.0.0.1`` by default);
* ``gateway-{theatre}.crt`` / ``.key`` for each theatre: a client certificate whose common name is
  the gateway's broker user, for the listener that authenticates gateways by certificate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isoperf.partition import read_theatres

SERVER_NAMES = ("mosquitto", "influxdb", "grafana", "rabbitmq-1", "rabbitmq-2", "rabbitmq-3", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _crypto() -> Any:
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - installed with the test extra
        raise SystemExit("isoperf dev-certs needs the 'cryptography' package: pip install -e '.[test]'") from None
    return x509


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(directory: Path, name: str = "isoperf development CA", days: int = 3650) -> Issued:
    """A self-signed CA certificate and its key: ``ca.crt``, ``ca.key``."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = Issued(directory / "ca.crt", directory / "ca.key")
    _write_cert(issued.cert, cert)
    _write_key(issued.key, key)
    return issued


def issue(
    ca: Issued,
    stem: Path,
    common_name: str,
    *,
    server_names: tuple[str, ...] = (),
    client: bool = False,
    days: int = 825,
    expired: bool = False,
) -> Issued:
    """A certificate signed by ``ca``: for a server (``server_names`` as subject alternative names)
    or a client (``client``); ``expired``: valid only in the past (for the tests)."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (now, now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(end if expired else end + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
            critical=False,
        )
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt: list[Any] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    stem.parent.mkdir(parents=True, exist_ok=True)
    issued = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
    _write_cert(issued.cert, cert)
    _write_key(issued.key, key)
    return issued


def make_all(directory: Path, theatres: list[str], server_names: tuple[str, ...] = SERVER_NAMES) -> list[Path]:
    """The CA, the server certificate and one client certificate per theatre gateway."""
    ca = make_ca(directory)
    out = [ca.cert, ca.key]
    server = issue(ca, directory / "server", server_names[0], server_names=server_names)
    out += [server.cert, server.key]
    for theatre in theatres:
        gw = issue(ca, directory / f"gateway-{theatre}", f"gateway-{theatre}", client=True)
        out += [gw.cert, gw.key]
    return out


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "dev-certs", help="make a development CA and certificates (never for production)", description=__doc__
    )
    ap.add_argument("--out", default="deploy/certs", help="directory (default: %(default)s)")
    ap.add_argument("--theatres", default="deploy/theatres.txt", help="theatre list (default: %(default)s)")
    ap.add_argument("--name", action="append", help=f"a server name (repeatable; default: {' '.join(SERVER_NAMES)})")
    ap.add_argument("--force", action="store_true", help="replace an existing CA")
    ap.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "ca.key").exists() and not args.force:
        print(f"error: {out / 'ca.key'} exists; --force replaces the CA and every certificate", file=sys.stderr)
        return 1
    names = tuple(args.name) if args.name else SERVER_NAMES
    for path in make_all(out, read_theatres(Path(args.theatres)), names):
        print(f"wrote {path}")
    print("Development certificates only: in production the hospital's CA issues them (docs/security.md).")
    return 0
