"""The MQTT adapter's guard against aiomqtt's closed-socket race, on a real event loop and socket."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from isoperf.sources.mqtt import tolerate_closed_sockets


def _watch_after_close(loop: asyncio.AbstractEventLoop) -> None:
    """What aiomqtt does when the broker drops the connection at the wrong moment: ``add_writer``
    scheduled from paho's callback, the socket closed before it runs."""
    a, b = socket.socketpair()
    loop.call_soon(loop.add_writer, a.fileno(), lambda: None)
    a.close()
    b.close()


def _fail() -> None:
    raise RuntimeError("a real bug")


async def _run(scheduled: list[str]) -> None:
    loop = asyncio.get_running_loop()
    tolerate_closed_sockets(loop)
    tolerate_closed_sockets(loop)  # once per loop, however many connections
    if "race" in scheduled:
        _watch_after_close(loop)
    if "bug" in scheduled:
        loop.call_soon(_fail)
    await asyncio.sleep(0.05)


def test_the_closed_socket_race_is_a_warning_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        asyncio.run(_run(["race"]))
    warned = [r for r in caplog.records if r.name == "isoperf.sources.mqtt"]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "Bad file descriptor" in warned[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback logged"


def test_any_other_error_in_a_callback_still_reaches_the_default_handler(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        asyncio.run(_run(["race", "bug"]))
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "a real bug" in str(errors[0].exc_info[1])


def test_without_the_guard_the_race_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """The guard is what turns it into a warning: asyncio alone logs it with a traceback."""

    async def bare() -> None:
        _watch_after_close(asyncio.get_running_loop())
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING):
        asyncio.run(bare())
    assert [r for r in caplog.records if r.name == "asyncio" and r.exc_info], (
        "asyncio logged the race with its traceback"
    )
