"""A local RabbitMQ cluster of three nodes, for development and tests (``isoperf cluster``).

Debian's ``rabbitmq-server`` 3.10, run as local processes on one host: each node has its
own name, AMQP, MQTT and distribution ports (free loopback ports), its own data and log
directories, the MQTT plugin enabled, and joins the others by ``classic_config`` peer
discovery. The nodes share one Erlang cookie (a ``HOME`` in the cluster's directory) and a
private ``epmd`` on a free port, started here and stopped with the cluster (the one that
Erlang would start by itself outlives the nodes).

The package's own ``rabbitmq-server`` script is run directly (the wrapper on the PATH
switches to the ``rabbitmq`` user, which cannot write in the cluster's directory). A node
takes about 17 s to start and about 110 MB of memory.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import hashlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiomqtt

from isoperf.tools.stack import StackError, find_binary, free_port, serve_until_signalled

_SCRIPT_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/"
log = logging.getLogger(__name__)
INSTALL_HINT = "install it with: sudo apt-get install rabbitmq-server   (or run scripts/bootstrap as root)"


def rabbit_script(name: str) -> str:
    """The package's own script ``name`` (``rabbitmq-server``, ``rabbitmqctl``), not the PATH wrapper."""
    found = sorted(glob.glob(_SCRIPT_GLOB + name))
    if not found:
        raise StackError(f"{name} of rabbitmq-server not found; {INSTALL_HINT}")
    return found[-1]


@dataclass(frozen=True)
class Node:
    index: int
    name: str  # the Erlang node name, e.g. isoperf-1a2b-1@localhost
    amqp_port: int
    mqtt_port: int
    dist_port: int

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


class LocalCluster:
    """A RabbitMQ cluster of ``size`` nodes as child processes. A context manager, or start/stop.

    ``stop_node``, ``kill_node`` (SIGKILL) and ``start_node`` are the levers of failure tests.
    """

    def __init__(self, directory: Path, *, size: int = 3, host: str = "127.0.0.1") -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.directory = directory.resolve()
        self.host = host
        tag = hashlib.sha256(str(self.directory).encode()).hexdigest()[:4]  # the same names on a restart
        self.nodes = [
            Node(i, f"isoperf-{tag}-{i + 1}@localhost", free_port(), free_port(), free_port()) for i in range(size)
        ]
        self.epmd_port = free_port()
        self.cookie = secrets.token_hex(16)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def amqp_urls(self) -> list[str]:
        return [n.amqp_url for n in self.nodes]

    def env(self) -> dict[str, str]:
        """The ``ISOPERF_*`` variables that point a consumer at this cluster over AMQP (the MQTT ones
        name the first node's MQTT listener, for gateways and tools)."""
        return {
            "ISOPERF_TRANSPORT": "amqp",
            "ISOPERF_AMQP_URLS": ",".join(self.amqp_urls),
            "ISOPERF_MQTT_HOST": self.host,
            "ISOPERF_MQTT_PORT": str(self.nodes[0].mqtt_port),
            "ISOPERF_MQTT_PROTOCOL": "3.1.1",  # RabbitMQ 3.10's MQTT plugin speaks no MQTT 5
        }

    # -- configuration -----------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.directory / "home"

    def _node_dir(self, node: Node) -> Path:
        return self.directory / f"node{node.index + 1}"

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        self.cookie = cookie.read_text().strip()
        peers = [f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}" for n in self.nodes]
        for node in self.nodes:
            d = self._node_dir(node)
            (d / "log").mkdir(parents=True, exist_ok=True)
            (d / "mnesia").mkdir(parents=True, exist_ok=True)
            (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
            (d / "rabbitmq.conf").write_text(
                "\n".join(
                    [
                        f"listeners.tcp.default = {self.host}:{node.amqp_port}",
                        f"mqtt.listeners.tcp.default = {self.host}:{node.mqtt_port}",
                        "mqtt.allow_anonymous = true",
                        "loopback_users = none",
                        "cluster_formation.peer_discovery_backend = classic_config",
                        *peers,
                        "log.file.level = warning",
                        "log.console = false",
                        "",
                    ]
                )
            )

    def node_env(self, node: Node) -> dict[str, str]:
        d = self._node_dir(node)
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    # -- processes ------------------------------------------------------------------

    def start(self, timeout_s: float = 300.0) -> Self:
        """Start every node at once and wait until they form one cluster (about 20 s here; a first start
        on a cold machine that has to join nodes by hand, two minutes)."""
        try:
            self._prepare()
            log = (self.directory / "epmd.log").open("ab")
            self._epmd = subprocess.Popen(
                [find_binary("epmd", ("/usr/bin", "/usr/lib/erlang/bin")), "-port", str(self.epmd_port)],
                env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            for node in self.nodes:
                self._spawn(node)
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                self.wait_node(node, deadline)
            self.wait_clustered(deadline)
            for node in self.nodes:
                self.wait_mqtt(node, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node: Node) -> None:
        log = (self._node_dir(node) / "server.out").open("ab")
        self._procs[node.index] = subprocess.Popen(
            [rabbit_script("rabbitmq-server")],
            env=self.node_env(node),
            cwd=self._node_dir(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def _tcp_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def running(self, node: Node) -> bool:
        proc = self._procs.get(node.index)
        return proc is not None and proc.poll() is None

    def wait_node(self, node: Node, deadline: float) -> None:
        """Until the node's AMQP and MQTT listeners answer (it has booted)."""
        while time.monotonic() < deadline:
            proc = self._procs[node.index]
            if proc.poll() is not None:
                tail = (self._node_dir(node) / "server.out").read_text(errors="replace")[-3000:]
                raise StackError(f"RabbitMQ node {node.name} exited with {proc.returncode}:\n{tail}")
            if self._tcp_open(node.amqp_port) and self._tcp_open(node.mqtt_port):
                return
            time.sleep(0.2)
        raise StackError(f"RabbitMQ node {node.name} did not start in time; see {self._node_dir(node)}/log")

    def ctl(self, node: Node, *argv: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n NODE ARGV...`` against one node; its output."""
        done = subprocess.run(
            [rabbit_script("rabbitmqctl"), "-n", node.name, *argv],
            env=self.node_env(node),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(argv)} on {node.name}: {done.stderr.strip() or done.stdout}")
        return done.stdout

    def running_nodes(self, node: Node) -> set[str]:
        """The nodes that ``node`` sees running in its cluster."""
        # A minute: each question boots an Erlang VM of its own, which a loaded host (a node just
        # restarted under 20 theatres' catch-up, load average 24 on 2 cores) took over 20 s to do.
        out = self.ctl(node, "eval", 'io:format("~p", [rabbit_nodes:all_running()]).', timeout_s=60)
        return {n.strip(" []'\n") for n in out.split("ok")[0].split(",") if n.strip(" []'\n")}

    def wait_clustered(self, deadline: float, via: int = 0, join: bool = True) -> None:
        """Until node ``via`` sees every running node; with ``join``, a node that booted alone joins it
        (reset: at a first start, when no node holds data yet)."""
        want = {n.name for n in self.nodes if self.running(n)}
        seen: set[str] = set()
        joined = False
        asked = ""  # why the last question found no cluster: said if none forms
        while time.monotonic() < deadline:
            try:
                seen, asked = self.running_nodes(self.nodes[via]), ""
            except (StackError, subprocess.TimeoutExpired) as exc:
                seen, asked = set(), f" (rabbitmqctl: {exc})"  # still booting, or too busy to answer
            if seen == want:
                return
            if join and seen and not joined:  # classic_config races when every node boots at once: join by hand
                for node in self.nodes:
                    if node.name not in seen and self.running(node):
                        self.ctl(node, "stop_app")
                        self.ctl(node, "reset")
                        self.ctl(node, "join_cluster", self.nodes[via].name)
                        self.ctl(node, "start_app")
                joined = True
            time.sleep(0.5)
        raise StackError(f"the nodes did not form one cluster: {self.nodes[via].name} sees {sorted(seen)}{asked}")

    def accepts_mqtt(self, node: Node, timeout_s: float = 10.0) -> bool:
        """Whether ``node``'s MQTT listener accepts a client (an MQTT 3.1.1 CONNECT answered with success)."""

        async def connect() -> None:
            async with aiomqtt.Client(
                self.host, node.mqtt_port, identifier=f"isoperf-cluster-probe-{node.index}", timeout=timeout_s
            ):
                pass

        try:
            asyncio.run(connect())
        except aiomqtt.MqttError:
            return False
        return True

    def wait_mqtt(self, node: Node, deadline: float, patience_s: float = 30.0) -> None:
        """Until ``node`` accepts MQTT clients. Seen once in a benchmark's cluster: a node whose MQTT
        plugin answered every CONNECT with "server unavailable" for minutes ("client ID registration
        timed out" in its log: the plugin keeps client ids in a Raft cluster of its own, and that node's
        join had been refused at boot, "cluster_change_not_permitted"), while the cluster itself had
        formed. Then one restart of the node's application is tried (the plugin joins again at start);
        a node that still refuses fails the cluster's start, saying so, instead of gateways retrying
        against it for ever. Seen again on a machine's first start (cold caches): two nodes booted alone,
        were joined by hand (``wait_clustered``) 95 s in, and their plugin refused clients for the first
        seconds after: the restart waits ``patience_s`` of refusals, and the cluster has minutes to start."""
        restarted = False
        refusing_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.accepts_mqtt(node):
                return
            if not restarted and time.monotonic() - refusing_since > patience_s:
                log.warning("RabbitMQ node %s refuses MQTT clients: restarting its application", node.name)
                self.ctl(node, "stop_app")
                self.ctl(node, "start_app")
                restarted = True
            time.sleep(1.0)
        raise StackError(f"RabbitMQ node {node.name} accepts no MQTT client; see {self._node_dir(node)}/log")

    def stop_node(self, index: int, timeout_s: float = 60.0) -> None:
        """Stop one node cleanly; ``start_node`` brings it back with its data."""
        proc = self._procs[index]
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_node(self, index: int) -> None:
        """SIGKILL one node (the Erlang VM and its helpers): nothing is saved or handed over."""
        proc = self._procs[index]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def start_node(self, index: int, timeout_s: float = 300.0) -> None:
        """Start a stopped or killed node again; it rejoins the cluster."""
        node = self.nodes[index]
        self._spawn(node)
        deadline = time.monotonic() + timeout_s
        self.wait_node(node, deadline)
        # Asked of a node that stayed up; never reset: a node slow to boot again would lose its data.
        self.wait_clustered(deadline, via=(index + 1) % len(self.nodes), join=False)

    def stop(self, timeout_s: float = 60.0) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()
            self._epmd.wait(timeout=10)
        self._epmd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cl = commands.add_parser("cluster", help="run a local 3-node RabbitMQ cluster (AMQP and MQTT) until Ctrl-C")
    cl.add_argument("--dir", default=".isoperf/cluster", help="state directory (default: %(default)s)")
    cl.add_argument("--nodes", type=int, default=3, help="how many nodes (default: %(default)s)")
    cl.set_defaults(run=_run_cluster)


def _run_cluster(args: argparse.Namespace) -> int:
    try:
        cluster = LocalCluster(Path(args.dir), size=args.nodes).start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for node in cluster.nodes:
        print(f"{node.name}  {node.amqp_url}  mqtt://{cluster.host}:{node.mqtt_port}")
    print(f"Data in    {cluster.directory}")
    print("Point the consumers at it with (and declare the topology: isoperf topology declare):")
    for k, v in cluster.env().items():
        print(f"  export {k}={v}")
    print("Ctrl-C (or SIGTERM) stops every node.")
    return serve_until_signalled(cluster.stop)
