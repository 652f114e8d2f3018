"""The compose file: it parses, and everything it names exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from isoperf.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_volumes_and_files_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "influxdb", *SERVICES} <= set(services), "every isoperf service is in the stack"
    volumes = set(compose["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        if name not in ("mosquitto", "influxdb"):
            assert svc["command"][0] in SERVICES, f"{name} runs an unknown command"
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (ROOT / svc["build"]["dockerfile"]).exists()


def test_every_isoperf_variable_in_compose_is_documented() -> None:
    documented = set(re.findall(r"ISOPERF_[A-Z0-9_]+", (ROOT / "docs" / "configuration.md").read_text()))
    used = set(re.findall(r"ISOPERF_[A-Z0-9_]+", (ROOT / "docker-compose.yml").read_text())) - {"ISOPERF_VERSION"}
    assert used <= documented, used - documented


def test_compose_file_validates_with_docker_compose() -> None:
    """Debian's docker-compose (installed by scripts/bootstrap) checks the file without an engine."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose missing: run scripts/bootstrap"
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "--profile", "simulator", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
