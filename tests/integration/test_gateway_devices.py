"""The gateway reading real device connections (a local TCP device server, a log file being
appended), on the real stack: readings stored with their signal, value and time; garbage kept
aside; a device unplugged raises a technical alarm that resolves when it is back."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from isoperf.tools.stack import free_port
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import rows, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class DeviceServer:
    """A serial-to-Ethernet device server: sends the lines it is given to whoever connects."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(conn)

    def send(self, line: bytes) -> int:
        with self._lock:
            for c in list(self._clients):
                try:
                    c.sendall(line + b"\r\n")
                except OSError:
                    self._clients.remove(c)
            return len(self._clients)

    def unplug(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
            # shutdown first: close alone leaves the accepting thread holding the port
            self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()

    def replug(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()


@pytest.fixture
def device_server() -> Iterator[DeviceServer]:
    server = DeviceServer()
    yield server
    with contextlib.suppress(OSError):  # already unplugged
        server.unplug()


def profile(name: str, transport: str, tmp_path: Path, **replace: str) -> Path:
    """A shipped profile with its transport pointed at this test's device, read in UTC."""
    text = (ROOT / "deploy/devices" / name).read_text()
    start = text.index("[transport]")
    end = text.index("[framing]")
    text = text[:start] + transport + "\n\n" + text[end:]
    text = text.replace('timezone = "local"', 'timezone = "UTC"')
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def pump_line(t: float, flow: float) -> bytes:
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp},{flow:.0f},185,38.5,850".encode()


def probe_line(n: int, t: float, counts: int) -> str:
    stamp = datetime.fromtimestamp(t, UTC).strftime("%m/%d/%y %H:%M:%S")
    return f"{n:04d} {stamp} 000015 {counts:06d} 006 S PT-BED-3\r\n"


def test_devices_over_tcp_and_a_log_file_are_stored_and_an_unplugged_device_raises_an_alarm(
    stack: ControlledStack,
    services: Callable[..., ServiceProcess],
    ids: tuple[str, str],
    tmp_path: Path,
    device_server: DeviceServer,
) -> None:
    theatre, session = ids
    services("recorder")
    services("alerts")
    log = tmp_path / "scaler.log"
    log.write_text("")
    pump = profile(
        "pump-console.toml",
        f'[transport]\ntype = "tcp"\nhost = "127.0.0.1"\nport = {device_server.port}',
        tmp_path,
        **{"silent_after_s = 10.0": "silent_after_s = 3.0"},
    )
    probe = profile("probe-scaler.toml", f'[transport]\ntype = "file"\npath = "{log}"\nstart = "start"', tmp_path)
    acq = services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_DEVICE="profiles",
        ISOPERF_DEVICE_PROFILES=json.dumps([str(pump), str(probe)]),
    )
    wait_for(lambda: device_server.send(b"") > 0, timeout=20)  # the gateway has connected
    t0 = float(int(time.time()))
    for i in range(5):
        device_server.send(pump_line(t0 + i, 1200 + i))
        with log.open("a") as f:
            f.write(probe_line(i, t0 + 6 * i, 2000 + i))
    device_server.send(b"\x00\xff garbage from a loose connector")
    w = where(theatre, session)
    wait_for(lambda: len(rows(stack, f"SELECT value FROM reading WHERE {w} AND signal='flow'")) == 5)
    flows = rows(stack, f"SELECT value FROM reading WHERE {w} AND signal='flow'")
    assert [(r["time"] / 1000, r["value"]) for r in flows] == [(t0 + i, 1200.0 + i) for i in range(5)]
    counts_q = f"SELECT value, dt FROM reading WHERE {w} AND signal='counts'"
    wait_for(lambda: len(rows(stack, counts_q)) == 5)
    counts = rows(stack, counts_q)
    assert [(r["time"] / 1000, r["value"], r["dt"]) for r in counts] == [
        (t0 + 6 * i, 2000.0 + i, 6.0) for i in range(5)
    ]
    dead = tmp_path / "deadletter" / "acquisition.jsonl"
    wait_for(lambda: dead.exists() and "pump-console" in dead.read_text())
    assert acq.alive(), "garbage never stops the gateway"

    device_server.unplug()
    fired = wait_for(
        lambda: rows(stack, f"SELECT status, message FROM alert WHERE {w} AND \"rule\" = 'device:pump-console'"),
        timeout=30,
    )
    assert fired[0]["status"] == "firing" and "pump-console disconnected" in fired[0]["message"]
    states = rows(stack, f"SELECT state, reason FROM device_status WHERE {w} AND source = 'pump-console'")
    assert [r["state"] for r in states][:2] == ["connected", "disconnected"], "the record keeps what the gateway said"
    device_server.replug()
    wait_for(
        lambda: any(
            r["status"] == "resolved"
            for r in rows(stack, f"SELECT status FROM alert WHERE {w} AND \"rule\" = 'device:pump-console'")
        ),
        timeout=60,
    )
    device_server.send(pump_line(t0 + 100, 1300))
    wait_for(lambda: len(rows(stack, f"SELECT value FROM reading WHERE {w} AND signal='flow'")) == 6, timeout=30)
