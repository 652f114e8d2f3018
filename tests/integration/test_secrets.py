"""No secret in a log line or an error message: services and tools run on the secured stack with
known passwords (right and wrong ones, in the settings and written into a URL), at DEBUG, and
every log, error message and dead-letter file of the run is searched for each of them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isoperf.tools.stack import free_port
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, mosquitto_pub, where
from tests.secure import SecureStack, secure_stack
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    s = secure_stack(tmp_path_factory.mktemp("secrets"))
    with s.stack:
        yield s


@pytest.fixture(scope="module")
def stack(secure: SecureStack) -> ControlledStack:
    return secure.stack


def cli(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, f"isoperf {' '.join(argv)} should have failed"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


def forms(secret: str, users: list[str]) -> list[str]:
    """A secret as it could leak: itself, and inside a Basic Authorization header of any user."""
    return [secret, *(base64.b64encode(f"{u}:{secret}".encode()).decode() for u in users)]


def test_no_secret_in_any_log_or_error_message(
    secure: SecureStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    stack = secure.stack
    _, session = ids
    wrong_mqtt, wrong_influx = f"wrong-mqtt-{uuid.uuid4().hex}", f"wrong-influx-{uuid.uuid4().hex}"
    debug = {"ISOPERF_LOG_LEVEL": "DEBUG"}
    recorder = services("recorder", **secure.service_env("recorder"), **debug)
    services("leakage", **secure.service_env("leakage"), **debug)
    # A recorder whose InfluxDB password is wrong: it is refused on every write, logs it, and retries.
    refused = services(
        "recorder", **(secure.service_env("recorder") | debug | {"ISOPERF_INFLUX_PASSWORD": wrong_influx})
    )
    # The InfluxDB credentials written into the URL: they are moved to the header and work.
    in_url = f"http://{secure.influx_user}:{secure.influx_password}@{stack.host}:{stack.influx_port}"
    pk = services("pk", **(secure.service_env("pk") | debug | {"ISOPERF_INFLUX_URL": in_url}))
    # A service with a wrong broker password: refused, says so, keeps trying.
    bad_login = ServiceProcess(
        "alerts",
        {
            **os.environ,
            **stack.env(),
            **secure.service_env("alerts"),
            **debug,
            "ISOPERF_MQTT_PASSWORD": wrong_mqtt,
            "ISOPERF_INSTANCE": "alerts-wrong-password",
            "ISOPERF_DEADLETTER_DIR": str(tmp_path / "deadletter"),
            "ISOPERF_ALERTS_STATE_FILE": str(tmp_path / "alerts-state.json"),
        },
        tmp_path / "alerts-wrong-password.log",
    ).start()
    # A service whose database is unreachable, its credentials in the URL: the URL is logged without them.
    unreachable = f"http://{secure.influx_user}:{secure.influx_password}@{stack.host}:{free_port()}"
    no_db = ServiceProcess(
        "leakage",
        {
            **os.environ,
            **stack.env(),
            **secure.service_env("leakage"),
            **debug,
            "ISOPERF_INFLUX_URL": unreachable,
            "ISOPERF_INSTANCE": "leakage-no-db",
            "ISOPERF_DEADLETTER_DIR": str(tmp_path / "deadletter"),
        },
        tmp_path / "leakage-no-db.log",
    ).start()

    w = where("theatre-1", session)
    for i in range(5):
        reading = f'{{"t": {1767225600 + i}, "v": {100 + i}}}'.encode()
        mosquitto_pub(stack, f"perfusion/theatre-1/{session}/raw/counts", reading, secure.gateway_args("theatre-1"))
    mosquitto_pub(stack, f"perfusion/theatre-1/{session}/raw/counts", b'{"t": "bad"}', secure.gateway_args("theatre-1"))
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") == 5)
    wait_for(lambda: "InfluxDB write refused (401)" in refused.output())
    wait_for(lambda: "Not authorized" in bad_login.output())
    wait_for(lambda: f"InfluxDB at http://{stack.host}:" in no_db.output())
    assert pk.alive() and recorder.alive()

    # The tools, refused: a wrong broker password, a wrong database password, credentials in a URL.
    tool_env = {**stack.env(), **secure.service_env("operator")}
    url_only = {k: v for k, v in tool_env.items() if not k.startswith("ISOPERF_INFLUX_USER") and "INFLUX_PASS" not in k}
    said = [
        cli({**tool_env, "ISOPERF_MQTT_PASSWORD": wrong_mqtt}, "health", "recorder"),
        cli({**tool_env, "ISOPERF_INFLUX_PASSWORD": wrong_influx}, "sessions"),
        cli({**tool_env, "ISOPERF_INFLUX_URL": unreachable}, "sessions"),
        cli({**url_only, "ISOPERF_INFLUX_URL": in_url.replace(secure.influx_password, wrong_influx)}, "sessions"),
    ]
    assert "Not authorized" in said[0]
    assert "authorization failed" in said[1] and "authorization failed" in said[3]
    assert f"cannot reach InfluxDB at http://{stack.host}:" in said[2]

    for sp in (bad_login, no_db):
        sp.stop()
    texts = {sp.log.name: sp.output() for sp in (recorder, refused, pk, bad_login, no_db)}
    texts |= {f"cli-{i}": text for i, text in enumerate(said)}
    texts |= {p.name: p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl")}
    assert any("rejected message" in t for t in texts.values()), "a dead letter was logged too"
    users = [*secure.passwords, secure.influx_user]
    secrets = [*secure.passwords.values(), secure.influx_password, wrong_mqtt, wrong_influx]
    for name, text in texts.items():
        for secret in secrets:
            for form in forms(secret, users):
                assert form not in text, f"a secret in {name}"
