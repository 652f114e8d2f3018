"""Fixtures: a real local stack (Mosquitto, InfluxDB) on free ports, service processes, log guard."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from isoperf.tools.stack import LocalStack
from tests.stack import ControlledStack

T = TypeVar("T")


@pytest.fixture(autouse=True)
def no_unexpected_exceptions(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test in which production code logged an exception it did not expect."""
    yield
    if request.node.get_closest_marker("allow_logged_errors"):
        return
    bad = [
        r
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.name.startswith(("isoperf", "services")) and r.exc_info
    ]
    assert not bad, f"unexpected exception logged: {bad[0].getMessage()}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlledStack]:
    with ControlledStack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
def ids() -> tuple[str, str]:
    """A unique theatre and session per test, so tests sharing a stack never see each other."""
    u = uuid.uuid4().hex[:8]
    return f"th-{u}", f"se-{u}"


class ServiceProcess:
    """One isoperf service run as its own process, as in production."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "isoperf.tools.cli", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_online(self, stack: LocalStack, timeout: float = 30.0) -> ServiceProcess:
        """Wait for the service's retained status to say ``online`` (it is subscribed by then)."""
        if not stack.wait_status(self.name, self.env["ISOPERF_INSTANCE"], timeout_s=timeout):
            pytest.fail(f"{self.name} did not come online:\n{self.output()}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class ServiceSet:
    """Starts service processes against one stack; ``stop_all`` stops those still running."""

    process_class: type[ServiceProcess] = ServiceProcess

    def __init__(self, stack: LocalStack, directory: Path) -> None:
        self.stack, self.directory = stack, directory
        self.started: list[ServiceProcess] = []

    def start(self, name: str, **extra: str) -> ServiceProcess:
        env = {
            **os.environ,
            **self.stack.env(),
            "ISOPERF_DEADLETTER_DIR": str(self.directory / "deadletter"),
            "ISOPERF_JOURNAL_DIR": str(self.directory / "journal"),
            "ISOPERF_ALERTS_STATE_FILE": str(self.directory / f"alerts-state-{uuid.uuid4().hex[:6]}.json"),
            "ISOPERF_INSTANCE": f"t{uuid.uuid4().hex[:6]}",
            **extra,
        }
        sp = self.process_class(name, env, self.directory / f"{name}-{len(self.started)}.log").start()
        self.started.append(sp)
        if name != "acquisition":
            sp.wait_online(self.stack)
        return sp

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every process still running, then wait for each; one that does not stop in time
        is killed (never left running for the next test) and reported."""
        running = [sp for sp in self.started if sp.alive()]
        for sp in running:
            assert sp.proc is not None
            sp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        stuck = []
        for sp in running:
            try:
                sp.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sp.kill()
                stuck.append(f"{sp.name} ({sp.log})")
        assert not stuck, f"killed, not stopped {timeout:.0f} s after SIGTERM: {', '.join(stuck)}"

    def tracebacks(self) -> list[str]:
        """The services whose logs hold a traceback (an exception production code did not handle or
        expect), each with the log lines around its first one: a failure on a clean clone shows its cause."""
        found = []
        for sp in self.started:
            lines = sp.output().splitlines()
            at = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
            if at is not None:
                excerpt = "\n".join(lines[max(0, at - 3) : at + 30])
                found.append(f"{sp.name} ({sp.log}):\n{excerpt}")
        return found


@pytest.fixture
def services(
    stack: LocalStack, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: ``services("leakage", ISOPERF_X="...")`` starts a service process; all stop at teardown,
    and a traceback in any of their logs fails the test (unless it is marked ``allow_logged_errors``)."""
    started = ServiceSet(stack, tmp_path)
    yield started.start
    started.stop_all()
    if not request.node.get_closest_marker("allow_logged_errors"):
        bad = started.tracebacks()
        assert not bad, "a traceback in the log of " + "\n\n".join(bad)


def wait_for(predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll until ``predicate()`` is truthy; return its value or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)
