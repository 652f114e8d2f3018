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

from isoperf.tools.cli import SERVICES

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


def test_every_service_volume_and_file_it_names_exists() -> None:
    c = compose()
    services, volumes = c["services"], set(c["volumes"])
    assert {"mosquitto", "mosquitto-users", "influxdb", "grafana", *SERVICES} <= set(services), "the whole stack"
    used_volumes = set()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
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


@pytest.mark.parametrize("user", ["recorder", "leakage", "alerts", "pk", "gateway-theatre-1", "operator"])
def test_every_broker_user_has_a_password_and_an_acl(user: str) -> None:
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert f"\nuser {user}\n" in acl
    script = (ROOT / "deploy" / "mosquitto" / "make-passwords.sh").read_text()
    assert re.search(rf"^add {user} \"\$MQTT_[A-Z_0-9]+_PASSWORD\"$", script, re.MULTILINE)
