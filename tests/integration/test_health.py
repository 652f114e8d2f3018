"""``isoperf health SERVICE``, the containers' health check, against a real broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def health(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "isoperf.cli", "health", service]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_healthy_while_online_unhealthy_once_stopped(stack, services) -> None:  # type: ignore[no-untyped-def]
    recorder = services("recorder")
    ok = health(recorder.env, "recorder")
    assert ok.returncode == 0 and ok.stdout.strip() == "online"
    recorder.stop()
    down = health(recorder.env, "recorder")
    assert down.returncode == 1 and down.stdout.strip() == "offline"
    assert health({**recorder.env, "ISOPERF_INSTANCE": "never-started"}, "recorder").returncode == 1
