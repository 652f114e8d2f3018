"""Start-up and shutdown: logging configured once, SIGTERM/SIGINT set a stop event."""

from __future__ import annotations

import asyncio
import logging
import signal


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # paho logs every packet at DEBUG through aiomqtt's logger.
    logging.getLogger("mqtt").setLevel(max(logging.INFO, logging.getLogger().level))


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT, so the service drains, flushes and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
