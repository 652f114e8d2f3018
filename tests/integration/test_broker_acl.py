"""The production broker configuration on a real Mosquitto, as deploy/ has it: TLS only (certificates
from `isoperf dev-certs`), passwords from the environment through make-passwords.sh, gateways by
their client certificate, no anonymous access, and each user only where the generated ACL lets it."""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from isoperf.partition import read_theatres
from isoperf.tools.devcerts import make_all
from isoperf.tools.stack import find_binary, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
USERS = {
    "recorder": "MQTT_RECORDER_PASSWORD",
    "leakage": "MQTT_LEAKAGE_PASSWORD",
    "alerts": "MQTT_ALERTS_PASSWORD",
    "pk": "MQTT_PK_PASSWORD",
    "operator": "MQTT_OPERATOR_PASSWORD",
    "viewer": "MQTT_VIEWER_PASSWORD",
}


@dataclass(frozen=True)
class Broker:
    port: int  # users and passwords
    cert_port: int  # gateways by certificate
    certs: Path

    def login(self, who: str | None) -> list[str]:
        """mosquitto_pub/sub arguments: TLS on the right listener, then a password or a certificate."""
        tls = ["-h", "127.0.0.1", "--cafile", str(self.certs / "ca.crt")]
        if who is not None and who.startswith("gateway-"):
            cert = ["--cert", str(self.certs / f"{who}.crt"), "--key", str(self.certs / f"{who}.key")]
            return [*tls, "-p", str(self.cert_port), *cert]
        auth = ["-u", who, "-P", f"pw-{who}"] if who else []
        return [*tls, "-p", str(self.port), *auth]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    d = tmp_path_factory.mktemp("broker")
    make_all(d / "certs", read_theatres(ROOT / "deploy" / "theatres.txt"))
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(d / "passwd"), **{v: f"pw-{u}" for u, v in USERS.items()}}
    env["PATH"] = f"{Path(find_binary('mosquitto_passwd')).parent}:{env['PATH']}"
    subprocess.run(
        ["sh", str(ROOT / "deploy" / "mosquitto" / "make-passwords.sh")], env=env, check=True, capture_output=True
    )
    b = Broker(free_port(), free_port(), d / "certs")
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 8883\n", f"listener {b.port} 127.0.0.1\n")
    conf = conf.replace("listener 8884\n", f"listener {b.cert_port} 127.0.0.1\n")
    conf = conf.replace("/mosquitto/certs/", f"{b.certs}/").replace("/mosquitto/auth/passwd", str(d / "passwd"))
    conf = conf.replace("/mosquitto/config/acl", str(ROOT / "deploy" / "mosquitto" / "acl"))
    conf = conf.replace("/mosquitto/data/", f"{d}/").replace("log_dest stdout", f"log_dest file {d / 'log'}")
    conf += f"user {getpass.getuser()}\n"  # as root, mosquitto would switch to its own user
    (d / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(d / "mosquitto.conf")])
    time.sleep(0.5)
    yield b
    proc.terminate()
    proc.wait()


def sub(broker: Broker, who: str | None, topic: str) -> subprocess.Popen[str]:
    argv = [find_binary("mosquitto_sub"), *broker.login(who), "-t", topic, "-C", "1", "-W", "3", "-q", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    return proc


def pub(broker: Broker, who: str | None, topic: str, message: str = "x", login: list[str] | None = None) -> int:
    argv = [find_binary("mosquitto_pub"), *(login or broker.login(who)), "-t", topic, "-m", message, "-q", "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).returncode


def delivered(broker: Broker, writer: str, reader: str, topic: str, filter_: str | None = None) -> bool:
    s = sub(broker, reader, filter_ or topic)
    pub(broker, writer, topic, "hello")
    out, _ = s.communicate(timeout=10)
    return out.strip() == "hello"


def test_anonymous_wrong_passwords_plain_tcp_and_gateways_without_certificates_are_refused(broker: Broker) -> None:
    assert pub(broker, None, "perfusion/theatre-1/s-1/event") != 0
    assert pub(broker, "recorder", "x", login=[*broker.login(None), "-u", "recorder", "-P", "wrong"]) != 0
    plain = ["-h", "127.0.0.1", "-p", str(broker.port), "-u", "recorder", "-P", "pw-recorder"]
    assert pub(broker, "recorder", "x", login=plain) != 0  # the right password, but not over TLS
    assert pub(broker, "recorder", "x") == 0  # ... and over TLS it is accepted
    # A gateway's name without its certificate, on either listener.
    no_cert = [*broker.login(None), "-u", "gateway-theatre-1"]
    assert pub(broker, "gateway-theatre-1", "perfusion/theatre-1/s-1/event", login=no_cert) != 0
    cert_port = ["-h", "127.0.0.1", "-p", str(broker.cert_port), "--cafile", str(broker.certs / "ca.crt")]
    assert pub(broker, None, "x", login=[*cert_port, "-u", "recorder", "-P", "pw-recorder"]) != 0


@pytest.mark.parametrize(
    ("writer", "reader", "topic", "allowed"),
    [
        ("gateway-theatre-1", "recorder", "perfusion/theatre-1/s-1/raw/counts", True),
        ("gateway-theatre-1", "leakage", "perfusion/theatre-1/s-1/raw/counts", True),
        ("gateway-theatre-1", "recorder", "perfusion/theatre-2/s-1/raw/counts", False),  # another theatre
        ("leakage", "recorder", "perfusion/theatre-1/s-1/raw/counts", False),  # a service forging readings
        ("leakage", "alerts", "perfusion/theatre-1/s-1/leakage", True),
        ("gateway-theatre-1", "alerts", "perfusion/theatre-1/s-1/leakage", False),
        ("alerts", "operator", "perfusion/theatre-1/s-1/alert", True),
        ("pk", "operator", "perfusion/theatre-1/s-1/alert", False),
        ("operator", "alerts", "perfusion/theatre-1/s-1/alert/ack", True),
        ("operator", "recorder", "perfusion/theatre-1/s-1/sample", True),
        ("pk", "operator", "perfusion/theatre-1/s-1/pk", True),
        ("recorder", "operator", "perfusion/status/recorder/recorder-1", True),
        ("recorder", "operator", "perfusion/status/leakage/leakage-1", False),  # only its own status
        ("gateway-theatre-2", "recorder", "perfusion/theatre-2/s-1/raw/counts", True),  # generated per theatre
        ("gateway-theatre-2", "recorder", "perfusion/theatre-1/s-1/raw/counts", False),
        ("viewer", "alerts", "perfusion/theatre-1/s-1/alert/ack", False),  # remote staff: read only
        ("viewer", "recorder", "perfusion/theatre-1/s-1/sample", False),
        ("alerts", "viewer", "perfusion/theatre-1/s-1/alert", True),
        ("leakage", "viewer", "perfusion/theatre-1/s-1/leakage", True),
        ("recorder", "viewer", "perfusion/status/recorder/recorder-1", True),
        ("recorder", "gateway-theatre-1", "perfusion/theatre-1/s-1/stored", True),  # store and forward
        ("recorder", "gateway-theatre-1", "perfusion/theatre-2/s-1/stored", False),  # not another theatre's
        ("operator", "gateway-theatre-1", "perfusion/theatre-1/s-1/stored", False),  # nobody else confirms
        ("gateway-theatre-1", "alerts", "perfusion/theatre-1/s-1/device", True),  # technical alarms
        ("gateway-theatre-1", "recorder", "perfusion/theatre-1/s-1/sample", True),
    ],
)
def test_each_user_publishes_and_reads_only_where_it_must(
    broker: Broker, writer: str, reader: str, topic: str, allowed: bool
) -> None:
    assert delivered(broker, writer, reader, topic) is allowed
