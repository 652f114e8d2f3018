"""MQTT over TLS on a real Mosquitto with a test CA: services connect and verify the broker, a gateway
logs in by its client certificate, and a wrong CA, an expired or misnamed certificate, a missing
client certificate or plain TCP are refused with a message that says why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isoperf.tools.stack import BrokerTls, LocalStack, Secured
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, mosquitto_pub, where
from tests.secure import SecureStack, secure_stack
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration
N_READINGS = 3960 * 5  # the default simulated session: 66 min, 5 signals at 1 Hz


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    s = secure_stack(tmp_path_factory.mktemp("secure"))
    with s.stack:
        yield s


@pytest.fixture(scope="module")
def stack(secure: SecureStack) -> ControlledStack:
    """The conftest's service fixtures run against the secured stack in this module."""
    return secure.stack


def health(env: dict[str, str], service: str = "recorder") -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "isoperf.tools.cli", "health", service]
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)


def test_services_verify_the_broker_and_a_gateway_logs_in_by_its_certificate(
    secure: SecureStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    stack = secure.stack
    _, session = ids
    recorder = services("recorder", **secure.service_env("recorder"))
    leakage = services("leakage", **secure.service_env("leakage"))
    gw = secure.pki.gateways["theatre-1"]
    gateway = services(
        "acquisition",
        ISOPERF_MQTT_PORT=str(stack.mqtt_cert_port),
        ISOPERF_MQTT_CERT_FILE=str(gw.cert),
        ISOPERF_MQTT_KEY_FILE=str(gw.key),
        ISOPERF_INSTANCE="gateway-theatre-1",
        ISOPERF_THEATRE="theatre-1",
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED="0",
    )
    assert gateway.wait(timeout=180) == 0, gateway.output()
    w = where("theatre-1", session)
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") == N_READINGS, timeout=120)
    wait_for(lambda: count(stack, f"SELECT count(state) FROM leakage WHERE {w}") == N_READINGS // 5, timeout=120)
    for sp in (recorder, leakage):
        assert f"connected to mqtts://{stack.host}:{stack.mqtt_port}" in sp.output()
    assert "mqtts://" in gateway.output()
    # The other theatre's gateway cannot write into this theatre, even with a valid certificate.
    mosquitto_pub(stack, f"perfusion/theatre-1/{session}/raw/flow", b'{"t": 1767225600.5, "v": 1}',
                  login=secure.gateway_args("theatre-2"))  # fmt: skip
    time.sleep(1.0)
    assert count(stack, f"SELECT count(value) FROM reading WHERE {w} AND signal='flow'") == N_READINGS // 5


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "the broker's certificate was refused (self-signed certificate in certificate chain)"),
        ("plain TCP", "the server speaks TLS on this port; plain MQTT is refused: set ISOPERF_MQTT_TLS=true"),
        ("expired client certificate", "refused this client's certificate or its absence (sslv3 alert certificate"),
        ("no client certificate", "(tlsv13 alert certificate required)"),
        ("wrong password", "Not authorized"),
    ],
)
def test_a_client_that_cannot_be_trusted_is_refused_with_a_clear_message(
    secure: SecureStack, case: str, expected: str
) -> None:
    stack, pki = secure.stack, secure.pki
    env = {**stack.env(), **secure.service_env("recorder"), "ISOPERF_INSTANCE": "recorder-x"}
    cert_port = str(stack.mqtt_cert_port)
    if case == "wrong CA":
        env["ISOPERF_MQTT_CA_FILE"] = str(pki.other_ca.cert)
    elif case == "plain TCP":
        env["ISOPERF_MQTT_TLS"] = "false"
        del env["ISOPERF_MQTT_CA_FILE"]
    elif case == "expired client certificate":
        cert = {
            "ISOPERF_MQTT_CERT_FILE": str(pki.expired_gateway.cert),
            "ISOPERF_MQTT_KEY_FILE": str(pki.expired_gateway.key),
        }
        env |= {"ISOPERF_MQTT_PORT": cert_port, **cert}
    elif case == "no client certificate":
        env["ISOPERF_MQTT_PORT"] = cert_port
    else:
        env["ISOPERF_MQTT_PASSWORD"] = "not-the-password"
    result = health(env)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("expired_server", "(certificate has expired)"),
        ("misnamed_server", "(IP address mismatch, certificate is not valid for '127.0.0.1'.)"),
    ],
)
def test_a_broker_whose_certificate_is_expired_or_names_another_host_is_refused(
    secure: SecureStack, tmp_path: Path, server: str, expected: str
) -> None:
    pki = secure.pki
    issued = getattr(pki, server)
    broker = LocalStack(tmp_path, secured=Secured(tls=BrokerTls(pki.ca.cert, issued.cert, issued.key)))
    broker.spawn_broker()
    try:
        broker.wait_ready(lambda: broker.tcp_open(broker.mqtt_port), "mosquitto", time.monotonic() + 20)
        env = {**broker.env(), "ISOPERF_INSTANCE": "recorder-x"}
        result = health(env)
        assert result.returncode == 1
        assert "TLS: the broker's certificate was refused " + expected in result.stderr, result.stderr
        # mosquitto_sub agrees: the same refusal by another client.
        argv = ["mosquitto_sub", *broker.mosquitto_client_args(), "-t", "x", "-C", "1", "-W", "3"]
        assert subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode != 0
    finally:
        broker.stop()


def test_a_service_that_cannot_verify_the_broker_says_so_and_keeps_trying(secure: SecureStack, tmp_path: Path) -> None:
    stack = secure.stack
    env = {
        **os.environ,
        **stack.env(),
        **secure.service_env("leakage"),
        "ISOPERF_MQTT_CA_FILE": str(secure.pki.other_ca.cert),
        "ISOPERF_INSTANCE": "leakage-wrong-ca",
        "ISOPERF_DEADLETTER_DIR": str(tmp_path / "deadletter"),
    }
    sp = ServiceProcess("leakage", env, tmp_path / "leakage.log").start()
    try:
        wait_for(lambda: "TLS: the broker's certificate was refused" in sp.output(), timeout=30)
        assert sp.alive()
        assert not stack.wait_status("leakage", "leakage-wrong-ca", timeout_s=1.0)
    finally:
        assert sp.stop() == 0
    assert "Traceback" not in sp.output()
