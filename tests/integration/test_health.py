"""``isoperf health SERVICE``, the containers' health check, against a real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import ServiceProcess
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


def health(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "isoperf.tools.cli", "health", service]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_healthy_while_online_unhealthy_once_stopped(
    stack: ControlledStack, services: Callable[..., ServiceProcess]
) -> None:
    recorder = services("recorder")
    ok = health(recorder.env, "recorder")
    assert ok.returncode == 0 and ok.stdout.strip() == "online"
    recorder.stop()
    down = health(recorder.env, "recorder")
    assert down.returncode == 1 and down.stdout.strip() == "offline"
    assert health({**recorder.env, "ISOPERF_INSTANCE": "never-started"}, "recorder").returncode == 1
