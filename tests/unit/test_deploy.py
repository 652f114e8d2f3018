"""The production stack's files: the compose file validates, names only what exists, and holds
no secret; every variable it takes is documented in .env.example."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from isoperf.partition import read_theatres
from isoperf.tools.brokerconf import acl
from isoperf.tools.cli import SERVICES
from isoperf.tools.devcerts import make_all

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def example_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_0-9]+=", line)
    )
    return dict(pairs)


def test_every_service_volume_and_file_it_names_exists(tmp_path: Path) -> None:
    # Certificates are never committed: a mounted one must be a file `isoperf dev-certs` writes.
    certs = {p.name for p in make_all(tmp_path, read_theatres(ROOT / "deploy" / "theatres.txt"))}
    c = compose()
    services, volumes = c["services"], set(c["volumes"])
    assert {"mosquitto", "mosquitto-users", "influxdb", "grafana", *SERVICES} <= set(services), "the whole stack"
    used_volumes = set()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./deploy/certs/"):
                assert Path(source).name in certs, f"{name} mounts {source}, which no one makes"
            elif source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
        if name in SERVICES:
            assert svc["command"][0] == name and svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert svc["healthcheck"]["test"] == ["CMD", "isoperf", "health", name]
            assert svc["restart"] in ("unless-stopped", "no")
            assert svc["depends_on"]["mosquitto"]["condition"] == "service_healthy"
            assert svc["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert used_volumes == volumes, "no volume declared and unused"


def test_no_secret_in_plain_text_and_every_variable_documented() -> None:
    text = COMPOSE.read_text()
    for name, svc in compose()["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if SECRET.search(key):
                assert re.fullmatch(r"\$\{[A-Z_0-9]+(:\?[^}]*|:-)?\}", str(value)), f"{name}: {key} must come from .env"
    used = set(re.findall(r"\$\{([A-Z_0-9]+)", text))
    documented = set(example_env())
    assert used == documented, f"undocumented: {used - documented}; unused: {documented - used}"
    assert all(v == "" for k, v in example_env().items() if SECRET.search(k) and "SMTP" not in k), (
        ".env.example holds no secret"
    )
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_isoperf_variable_in_compose_is_documented() -> None:
    documented = set(re.findall(r"ISOPERF_[A-Z0-9_]+", (ROOT / "docs" / "configuration.md").read_text()))
    used = set(re.findall(r"ISOPERF_[A-Z0-9_]+", COMPOSE.read_text())) - {"ISOPERF_VERSION"}
    assert used <= documented, used - documented


def test_compose_file_validates_with_docker_compose(tmp_path: Path) -> None:
    """Debian's docker-compose (installed by scripts/bootstrap) checks the file without an engine."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose missing: run scripts/bootstrap"
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v or 'x-' + k.lower()}\n" for k, v in example_env().items()))
    argv = [binary, "--env-file", str(env), "-f", str(COMPOSE), "--profile", "simulator", "config"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["recorder"]["environment"]["ISOPERF_MQTT_PASSWORD"] == "x-mqtt_recorder_password"
    assert resolved["services"]["recorder"]["environment"]["ISOPERF_INFLUX_URL"] == "https://influxdb:8086"
    # Without the secrets compose refuses to start rather than run with empty passwords.
    bare = tmp_path / "bare.env"
    bare.write_text("")
    refused = subprocess.run(
        [binary, "--env-file", str(bare), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "set in .env" in refused.stderr


@pytest.mark.parametrize("user", ["recorder", "leakage", "alerts", "pk", "operator", "viewer"])
def test_every_broker_user_has_a_password_and_an_acl(user: str) -> None:
    text = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert f"\nuser {user}\n" in text
    script = (ROOT / "deploy" / "mosquitto" / "make-passwords.sh").read_text()
    assert re.search(rf"^add {user} \"\$MQTT_[A-Z_0-9]+_PASSWORD\"$", script, re.MULTILINE)


def test_the_acl_is_the_one_generated_from_the_theatre_list() -> None:
    theatres = read_theatres(ROOT / "deploy" / "theatres.txt")
    assert (ROOT / "deploy" / "mosquitto" / "acl").read_text() == acl(theatres), (
        "run: isoperf broker-acl --out deploy/mosquitto/acl"
    )
    for theatre in theatres:
        assert f"\nuser gateway-{theatre}\ntopic write perfusion/{theatre}/+/meta\n" in acl(theatres)
    # A gateway has no password: it logs in by certificate, on the listener that demands one.
    assert "gateway" not in (ROOT / "deploy" / "mosquitto" / "make-passwords.sh").read_text().split("set -eu")[1]


def test_the_viewer_role_writes_nothing() -> None:
    block = acl(["theatre-1"]).split("\nuser viewer\n")[1].split("\n\n")[0]
    rules = [line for line in block.splitlines() if line.startswith("topic")]
    assert rules and all(line.startswith("topic read ") for line in rules)
    assert "alert/ack" not in block and "silence" not in block


@pytest.mark.parametrize("text", ["theatre-1\nTheatre 2\n", "theatre-1\ntheatre-1\n", "# none\n"])
def test_a_bad_theatre_list_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(ValueError, match=r"t\.txt"):
        read_theatres(tmp_path / "t.txt")


def test_tls_everywhere() -> None:
    """No plain MQTT or HTTP between the parts: every client speaks TLS and verifies the server."""
    text = COMPOSE.read_text()
    assert "http://" not in text and "1883" not in text
    services = compose()["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["ISOPERF_MQTT_TLS"] == "true" and env["ISOPERF_MQTT_CA_FILE"].endswith("ca.crt"), name
        assert env["ISOPERF_INFLUX_URL"].startswith("https://") and env["ISOPERF_INFLUX_CA_FILE"], name
    assert services["acquisition"]["environment"]["ISOPERF_MQTT_PORT"] == "8884"  # by its certificate
    assert "ISOPERF_MQTT_PASSWORD" not in services["acquisition"]["environment"]
    assert services["influxdb"]["environment"]["INFLUXDB_HTTP_HTTPS_ENABLED"] == "true"
    assert services["grafana"]["environment"]["GF_SERVER_PROTOCOL"] == "https"
    assert services["alerts"]["environment"]["ISOPERF_ALERTS_SMTP_STARTTLS"].endswith(":-true}")
    ds = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "isoperf.yaml").read_text())
    source = ds["datasources"][0]
    assert source["url"].startswith("https://") and source["jsonData"]["tlsAuthWithCACert"] is True
    # The broker: every listener has a certificate; the gateways' one demands a client certificate.
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    listeners = conf.split("\nlistener ")[1:]
    assert [block.split()[0] for block in listeners] == ["8883", "8884"]
    assert all("certfile /mosquitto/certs/server.crt" in block for block in listeners)
    assert "require_certificate true" in listeners[1] and "use_identity_as_username true" in listeners[1]
