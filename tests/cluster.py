"""Services on a local RabbitMQ cluster: consumers over AMQP, gateways over MQTT to any node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isoperf.tools.cluster import LocalCluster
from isoperf.tools.stack import LocalStack
from tests.conftest import ServiceProcess, ServiceSet


class AmqpServiceProcess(ServiceProcess):
    def wait_online(self, stack: LocalStack, timeout: float = 60.0) -> ServiceProcess:
        """A consumer on the cluster is ready once it consumes (AMQP has no retained status to wait for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "connected to amqp cluster" in self.output():
                return self
            if not self.alive():
                break
            time.sleep(0.1)
        pytest.fail(f"{self.name} did not connect to the cluster:\n{self.output()}")


class WatchProcess(AmqpServiceProcess):
    """``isoperf topology watch``: the alarm for theatres without a binding."""

    def start(self) -> ServiceProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "isoperf.tools.cli", "topology", "watch"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_online(self, stack: LocalStack, timeout: float = 60.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if "watching isoperf.unbound" in self.output():
                return self
            time.sleep(0.1)
        pytest.fail(f"the watch did not start:\n{self.output()}")


class ClusterServices(ServiceSet):
    """Consumers over AMQP on ``cluster`` (InfluxDB from ``stack``); gateways over MQTT to a node."""

    process_class = AmqpServiceProcess

    def __init__(self, stack: LocalStack, cluster: LocalCluster, directory: Path) -> None:
        super().__init__(stack, directory)
        self.cluster = cluster

    def consumer(self, name: str, **extra: str) -> ServiceProcess:
        return self.start(name, **self.cluster.env(), **extra)

    def watcher(self) -> ServiceProcess:
        env = {**os.environ, **self.stack.env(), **self.cluster.env(), "ISOPERF_INSTANCE": "watch"}
        sp = WatchProcess("topology", env, self.directory / f"watch-{len(self.started)}.log").start()
        self.started.append(sp)
        return sp.wait_online(self.stack)

    def gateway(self, node: int, theatre: str, session: str, **extra: str) -> ServiceProcess:
        """A simulated theatre's gateway publishing MQTT to one node of the cluster."""
        env = {
            **self.cluster.env(),
            "ISOPERF_MQTT_PORT": str(self.cluster.nodes[node].mqtt_port),
            "ISOPERF_THEATRE": theatre,
            "ISOPERF_SESSION": session,
            **extra,
        }
        return self.start("acquisition", **env)


def isoperf_on(cluster: LocalCluster, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An ``isoperf`` command pointed at the cluster (through its first node), with ``env`` set."""
    return subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", *argv],
        env={**os.environ, **cluster.env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def queue_leaders(cluster: LocalCluster, via: int = 0) -> dict[str, str]:
    """Quorum queue -> the node leading it."""
    out = cluster.ctl(cluster.nodes[via], "list_queues", "name", "leader", "--no-table-headers", "--quiet")
    return {parts[0]: parts[1] for line in out.splitlines() if len(parts := line.split()) == 2}
