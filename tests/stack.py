"""The local stack with the levers failure tests pull: stop, kill and restart each server."""

from __future__ import annotations

import signal
import time

from isoperf.tools.stack import LocalStack


class ControlledStack(LocalStack):
    def stop_broker(self) -> None:
        """Stop Mosquitto (it saves its persistent sessions); ``restart_broker`` brings it back."""
        proc = self.process("mosquitto")
        proc.terminate()
        proc.wait(timeout=15)

    def kill_broker(self) -> None:
        """SIGKILL Mosquitto: what it had not saved to its persistence file is gone."""
        proc = self.process("mosquitto")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)

    def restart_broker(self, timeout_s: float = 20.0) -> None:
        self.spawn_broker()
        self.wait_ready(lambda: self.tcp_open(self.mqtt_port), "mosquitto", time.monotonic() + timeout_s)

    def stop_influx(self) -> None:
        """Stop InfluxDB; ``restart_influx`` brings it back with its data."""
        proc = self.process("influxd")
        proc.terminate()
        proc.wait(timeout=30)

    def restart_influx(self, timeout_s: float = 60.0) -> None:
        self.spawn_influx()
        self.wait_ready(self.influx_ready, "influxd", time.monotonic() + timeout_s)
