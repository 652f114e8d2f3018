"""A production-like local stack for the security tests: a test CA, Mosquitto with TLS only, users,
passwords and the generated ACL, InfluxDB with authentication on; every secret known to the test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from isoperf.tools.brokerconf import acl
from isoperf.tools.devcerts import Issued, issue, make_ca
from isoperf.tools.stack import BrokerTls, Secured
from tests.stack import ControlledStack

THEATRES = ["theatre-1", "theatre-2"]
USERS = ("recorder", "leakage", "alerts", "pk", "operator", "viewer")


@dataclass(frozen=True)
class Pki:
    """A test CA and what it issued, and a CA nobody trusts."""

    ca: Issued
    server: Issued  # for 127.0.0.1 and localhost
    gateways: dict[str, Issued]  # theatre -> client certificate, common name gateway-{theatre}
    expired_gateway: Issued
    expired_server: Issued
    misnamed_server: Issued  # names only "mosquitto"
    other_ca: Issued


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory / "ca")
    return Pki(
        ca=ca,
        server=issue(ca, directory / "server", "localhost", server_names=("localhost", "127.0.0.1")),
        gateways={t: issue(ca, directory / f"gateway-{t}", f"gateway-{t}", client=True) for t in THEATRES},
        expired_gateway=issue(ca, directory / "expired-gateway", "gateway-theatre-1", client=True, expired=True),
        expired_server=issue(
            ca, directory / "expired-server", "localhost", server_names=("localhost", "127.0.0.1"), expired=True
        ),
        misnamed_server=issue(ca, directory / "misnamed-server", "mosquitto", server_names=("mosquitto",)),
        other_ca=make_ca(directory / "other-ca", "a CA nobody here trusts"),
    )


@dataclass(frozen=True)
class SecureStack:
    stack: ControlledStack
    pki: Pki
    passwords: dict[str, str]  # broker user -> password
    influx_user: str
    influx_password: str

    def service_env(self, user: str) -> dict[str, str]:
        """The variables that log a service in as ``user`` (broker) and as the InfluxDB administrator."""
        return {
            "ISOPERF_MQTT_USERNAME": user,
            "ISOPERF_MQTT_PASSWORD": self.passwords[user],
            "ISOPERF_INFLUX_USERNAME": self.influx_user,
            "ISOPERF_INFLUX_PASSWORD": self.influx_password,
        }

    def gateway_args(self, theatre: str) -> list[str]:
        """mosquitto_pub/sub arguments of a theatre gateway: the certificate listener, its certificate."""
        gw = self.pki.gateways[theatre]
        s = self.stack
        tls = ["-h", s.host, "-p", str(s.mqtt_cert_port), "--cafile", str(self.pki.ca.cert)]
        return [*tls, "--cert", str(gw.cert), "--key", str(gw.key)]


def secure_stack(directory: Path) -> SecureStack:
    """Not started: use as a context manager (``with s.stack: ...``)."""
    pki = make_pki(directory / "pki")
    tag = uuid.uuid4().hex[:10]
    passwords = {u: f"mqtt-{u}-{tag}" for u in USERS}
    acl_file = directory / "acl"
    acl_file.write_text(acl(THEATRES))
    influx = ("admin", f"influx-admin-{tag}")
    secured = Secured(
        tls=BrokerTls(pki.ca.cert, pki.server.cert, pki.server.key),
        mqtt_users=passwords,
        acl_file=acl_file,
        tool_user="operator",
        influx_admin=influx,
    )
    return SecureStack(ControlledStack(directory / "stack", secured=secured), pki, passwords, *influx)
