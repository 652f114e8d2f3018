"""A local stack of real servers: Mosquitto and InfluxDB 1.x from the Debian packages,
run as local processes on loopback ports with their data in one directory.

Used by ``isoperf stack``, by the demo and by the test fixtures (on free ports
in temporary directories).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from isoperf.influx import Row, rows_of

INSTALL_HINT = "install them with: sudo apt-get install mosquitto influxdb   (or run scripts/bootstrap as root)"


class StackError(RuntimeError):
    pass


def spawn_service(name: str, env: Mapping[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``isoperf NAME`` (a service or a gateway) as its own process, the way the benchmarks and
    checks run them: this environment over ``env`` (``LocalStack.env()`` and the service's settings),
    its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "isoperf.tools.cli", name],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


def _influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin")) -> str:
    path = shutil.which(name)
    if path:
        return path
    for d in extra_dirs:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise StackError(f"{name} not found; {INSTALL_HINT}")


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS files: the CA that signed its certificate and the clients', its certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Secured:
    """What turns the stack's open servers into production-like ones: TLS on the broker (only), broker
    users with passwords and an ACL, and InfluxDB with authentication on and an administrator."""

    tls: BrokerTls | None = None
    mqtt_users: dict[str, str] = field(default_factory=dict)  # user -> password; empty: anonymous
    acl_file: Path | None = None
    tool_user: str | None = None  # the stack's own mosquitto_sub (status checks) logs in as this user
    influx_admin: tuple[str, str] | None = None  # (user, password); None: no authentication


class LocalStack:
    """Mosquitto and InfluxDB as child processes. Use as a context manager or call start/stop.

    ``secured`` runs them as in production: the broker with TLS only (the MQTT port, verified
    by password; ``mqtt_cert_port``, clients by their certificate), users and an ACL; InfluxDB
    with authentication on.
    """

    def __init__(
        self,
        directory: Path,
        *,
        mqtt_port: int | None = None,
        influx_port: int | None = None,
        database: str = "perfusion",
        host: str = "127.0.0.1",
        secured: Secured | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.host = host
        self.mqtt_port = mqtt_port or free_port()
        self.influx_port = influx_port or free_port()
        self.database = database
        self.secured = secured or Secured()
        self.mqtt_cert_port = free_port() if self.secured.tls else None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def influx_url(self) -> str:
        return f"http://{self.host}:{self.influx_port}"

    def env(self) -> dict[str, str]:
        """The ``ISOPERF_*`` variables that point a service at this stack (credentials aside)."""
        env = {
            "ISOPERF_MQTT_HOST": self.host,
            "ISOPERF_MQTT_PORT": str(self.mqtt_port),
            "ISOPERF_INFLUX_URL": self.influx_url,
            "ISOPERF_INFLUX_DATABASE": self.database,
            "ISOPERF_DEADLETTER_DIR": str(self.directory / "deadletter"),
            "ISOPERF_JOURNAL_DIR": str(self.directory / "journal"),
        }
        if self.secured.tls is not None:
            env |= {"ISOPERF_MQTT_TLS": "true", "ISOPERF_MQTT_CA_FILE": str(self.secured.tls.ca_file)}
        return env

    def mosquitto_client_args(self, user: str | None = None) -> list[str]:
        """Arguments of mosquitto_pub/mosquitto_sub for this broker: address, TLS, the login of ``user``."""
        args = ["-h", self.host, "-p", str(self.mqtt_port)]
        if self.secured.tls is not None:
            args += ["--cafile", str(self.secured.tls.ca_file)]
        user = user or self.secured.tool_user
        if user is not None:
            args += ["-u", user, "-P", self.secured.mqtt_users[user]]
        return args

    # -- configuration -----------------------------------------------------------------

    def _mosquitto_conf(self) -> Path:
        d = self.directory / "mosquitto"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "mosquitto.conf"
        sec = self.secured
        if sec.tls is None:
            listeners = [f"listener {self.mqtt_port} {self.host}"]
        else:
            files = [f"cafile {sec.tls.ca_file}", f"certfile {sec.tls.cert_file}", f"keyfile {sec.tls.key_file}"]
            listeners = [
                f"listener {self.mqtt_port} {self.host}",
                *files,
                "tls_version tlsv1.2",
                f"listener {self.mqtt_cert_port} {self.host}",
                *files,
                "tls_version tlsv1.2",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if sec.mqtt_users:
            passwd = d / "passwd"
            passwd.write_text("")
            passwd.chmod(0o600)
            for user, password in sec.mqtt_users.items():
                subprocess.run([find_binary("mosquitto_passwd"), "-b", str(passwd), user, password], check=True)
            auth = ["allow_anonymous false", f"password_file {passwd}"]
        else:
            auth = ["allow_anonymous true"]
        if sec.acl_file is not None:
            auth.append(f"acl_file {sec.acl_file}")
        conf.write_text(
            "\n".join(
                [
                    *listeners,
                    *auth,
                    # Run as whoever started us (as root, mosquitto would switch to 'mosquitto').
                    f"user {getpass.getuser()}",
                    "persistence true",
                    f"persistence_location {d}/",
                    "autosave_interval 5",
                    # Keep what an offline persistent client has not acknowledged
                    # (the default of 1000 would drop the rest).
                    "max_queued_messages 10000000",
                    "max_inflight_messages 100",
                    "max_packet_size 33554432",
                    # Small messages must not wait for Nagle's algorithm (~40 ms a hop).
                    "set_tcp_nodelay true",
                    f"log_dest file {d}/mosquitto.log",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "",
                ]
            )
        )
        return conf

    def _influx_conf(self) -> Path:
        d = self.directory / "influxdb"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "influxdb.conf"
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{free_port()}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.influx_port}"
  auth-enabled = {"true" if self.secured.influx_admin else "false"}
  log-enabled = false
[logging]
  level = "warn"
"""
        )
        return conf

    # -- processes ------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.spawn_broker()
            self.spawn_influx()
            deadline = time.monotonic() + timeout_s
            self.wait_ready(lambda: self.tcp_open(self.mqtt_port), "mosquitto", deadline)
            self.wait_ready(self.influx_ready, "influxd", deadline)
            self.create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def spawn_broker(self) -> None:
        self._spawn("mosquitto", [find_binary("mosquitto"), "-c", str(self._mosquitto_conf())])

    def spawn_influx(self) -> None:
        self._spawn("influxd", [find_binary("influxd"), "-config", str(self._influx_conf())])

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.directory / f"{name}.log").open("ab")
        self._procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def wait_ready(self, ready: Callable[[], bool], name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.poll() is not None:
                tail = (self.directory / f"{name}.log").read_text(errors="replace")[-2000:]
                raise StackError(f"{name} exited with {proc.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.1)
        raise StackError(f"{name} did not answer in time; see {self.directory / (name + '.log')}")

    def tcp_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def influx_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.influx_url}/ping", timeout=1) as resp:
                return bool(resp.status == 204)
        except OSError:
            return False

    def create_database(self) -> None:
        admin = self.secured.influx_admin
        if admin is not None:  # with authentication on, InfluxDB lets the first administrator be created
            user, password = admin
            self.influxql(f'CREATE USER "{user}" WITH PASSWORD {_influxql_string(password)} WITH ALL PRIVILEGES')
        self.influxql(f'CREATE DATABASE "{self.database}"')

    def influxql(self, q: str) -> list[dict[str, Any]]:
        """Run one InfluxQL statement synchronously (for set-up, the CLI and tests)."""
        data = urllib.parse.urlencode({"q": q, "db": self.database, "epoch": "ms"}).encode()
        request = urllib.request.Request(f"{self.influx_url}/query", data=data)
        if self.secured.influx_admin is not None:
            token = base64.b64encode(":".join(self.secured.influx_admin).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
        result = body["results"][0]
        if "error" in result:
            raise StackError(result["error"])
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    def rows(self, q: str) -> list[Row]:
        """Run InfluxQL and return every row of every series as a dict (time in epoch ms, tags merged in)."""
        return rows_of(self.influxql(q))

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The running ``mosquitto`` or ``influxd`` process."""
        return self._procs[name]

    def wait_status(self, service: str, instance: str, want: str = "online", timeout_s: float = 30.0) -> bool:
        """Wait until a service's retained status topic says ``want``; False if it did not in time."""
        argv = [
            find_binary("mosquitto_sub"),
            *self.mosquitto_client_args(),
            "-t",
            f"perfusion/status/{service}/{instance}",
            "-C",
            "1",
            "-W",
            "1",
        ]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(argv, capture_output=True, timeout=5, check=False)
            if out.stdout.strip() == want.encode():
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"{name} did not stop on SIGTERM and was killed")
        self._procs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = commands.add_parser("stack", help="run Mosquitto and InfluxDB locally until Ctrl-C or SIGTERM")
    st.add_argument("--dir", default=".isoperf/stack", help="state directory (default: %(default)s)")
    st.add_argument("--mqtt-port", type=int, default=1883)
    st.add_argument("--influx-port", type=int, default=8086)
    st.set_defaults(run=_run_stack)


def _run_stack(args: argparse.Namespace) -> int:
    try:
        stack = LocalStack(Path(args.dir), mqtt_port=args.mqtt_port, influx_port=args.influx_port).start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Mosquitto  mqtt://{stack.host}:{stack.mqtt_port}")
    print(f"InfluxDB   {stack.influx_url}  (database {stack.database})")
    print(f"Data in    {stack.directory}")
    print("Point the services at it with:")
    for k, v in stack.env().items():
        print(f"  export {k}={v}")
    print("Ctrl-C (or SIGTERM) stops both.")
    return serve_until_signalled(stack.stop)


def serve_until_signalled(stop: Callable[[], None]) -> int:
    """Wait for SIGINT or SIGTERM, then ``stop``: what ``isoperf stack`` and ``isoperf cluster`` run."""
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        stopped.wait()
    finally:
        stop()
    return 0
