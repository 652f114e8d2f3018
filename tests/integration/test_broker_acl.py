"""The production broker configuration on a real Mosquitto: passwords from the environment
through make-passwords.sh, no anonymous access, and each user only where the ACL lets it."""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isoperf.tools.stack import find_binary, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
USERS = {
    "recorder": "MQTT_RECORDER_PASSWORD",
    "leakage": "MQTT_LEAKAGE_PASSWORD",
    "alerts": "MQTT_ALERTS_PASSWORD",
    "pk": "MQTT_PK_PASSWORD",
    "gateway-theatre-1": "MQTT_GATEWAY_THEATRE_1_PASSWORD",
    "operator": "MQTT_OPERATOR_PASSWORD",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    d = tmp_path_factory.mktemp("broker")
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(d / "passwd"), **{v: f"pw-{u}" for u, v in USERS.items()}}
    env["PATH"] = f"{Path(find_binary('mosquitto_passwd')).parent}:{env['PATH']}"
    subprocess.run(
        ["sh", str(ROOT / "deploy" / "mosquitto" / "make-passwords.sh")], env=env, check=True, capture_output=True
    )
    port = free_port()
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1").replace(
        "/mosquitto/auth/passwd", str(d / "passwd")
    )
    conf = conf.replace("/mosquitto/config/acl", str(ROOT / "deploy" / "mosquitto" / "acl"))
    conf = conf.replace("/mosquitto/data/", f"{d}/").replace("log_dest stdout", f"log_dest file {d / 'log'}")
    conf += f"user {getpass.getuser()}\n"  # as root, mosquitto would switch to its own user
    (d / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(d / "mosquitto.conf")])
    time.sleep(0.5)
    yield port
    proc.terminate()
    proc.wait()


def sub(port: int, user: str | None, topic: str) -> subprocess.Popen[str]:
    auth = ["-u", user, "-P", f"pw-{user}"] if user else []
    argv = [find_binary("mosquitto_sub"), "-p", str(port), *auth, "-t", topic, "-C", "1", "-W", "3", "-q", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    return proc


def pub(port: int, user: str | None, topic: str, message: str = "x") -> int:
    auth = ["-u", user, "-P", f"pw-{user}"] if user else []
    argv = [find_binary("mosquitto_pub"), "-p", str(port), *auth, "-t", topic, "-m", message, "-q", "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).returncode


def delivered(port: int, writer: str, reader: str, topic: str, filter_: str | None = None) -> bool:
    s = sub(port, reader, filter_ or topic)
    pub(port, writer, topic, "hello")
    out, _ = s.communicate(timeout=10)
    return out.strip() == "hello"


def test_anonymous_and_wrong_passwords_are_refused(broker: int) -> None:
    assert pub(broker, None, "perfusion/theatre-1/s-1/event") != 0
    argv = [find_binary("mosquitto_pub"), "-p", str(broker), "-u", "recorder", "-P", "wrong", "-t", "x", "-m", "x"]
    assert subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode != 0


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
        ("recorder", "gateway-theatre-1", "perfusion/theatre-1/s-1/stored", True),  # store and forward
        ("recorder", "gateway-theatre-1", "perfusion/theatre-2/s-1/stored", False),  # not another theatre's
        ("operator", "gateway-theatre-1", "perfusion/theatre-1/s-1/stored", False),  # nobody else confirms
        ("gateway-theatre-1", "alerts", "perfusion/theatre-1/s-1/device", True),  # technical alarms
        ("gateway-theatre-1", "recorder", "perfusion/theatre-1/s-1/sample", True),
    ],
)
def test_each_user_publishes_and_reads_only_where_it_must(
    broker: int, writer: str, reader: str, topic: str, allowed: bool
) -> None:
    assert delivered(broker, writer, reader, topic) is allowed
