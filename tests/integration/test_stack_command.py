"""``isoperf stack`` stops Mosquitto and InfluxDB on SIGTERM as on Ctrl-C: nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isoperf.tools.stack import free_port

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_broker_and_the_database(tmp_path: Path, sig: signal.Signals) -> None:
    argv = [sys.executable, "-m", "isoperf.tools.cli", "stack", "--dir", str(tmp_path)]
    argv += ["--mqtt-port", str(free_port()), "--influx-port", str(free_port())]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "stops both" in line:
                break
        servers = children(proc.pid)
        assert len(servers) == 2, lines  # mosquitto and influxd
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        proc.stdout.read()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in servers)
