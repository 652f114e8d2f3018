"""Where a service's messages come from and its results go: one small interface, one
implementation per broker (MQTT on Mosquitto today).

A :class:`Source` opens a :class:`Connection` subscribed to some topic filters. The
connection delivers messages one at a time, acknowledges them in batches once their
results are stored, and publishes at QoS 1 (or the broker's equivalent). A broken
connection raises :class:`ConnectionLost`; the runtime reconnects with backoff, and
the broker redelivers whatever was not acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


class ConnectionLost(Exception):  # noqa: N818  (an event, not an error of the program)
    """The connection to the broker broke (or could not be made); the reason is in the message."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker delivered it; ``token`` is what the source needs to acknowledge it
    (an MQTT packet id, an AMQP delivery tag); ``qos`` 0 needs no acknowledgement."""

    topic: str
    payload: bytes
    token: int = 0
    qos: int = 1


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class Connection(Publisher, Protocol):
    def backlog(self) -> int:
        """How many deliveries are waiting, already received."""
        ...

    async def receive(self) -> Delivery: ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries (their results are stored): the broker may forget them."""
        ...


class Source(Protocol):
    name: str
    # Whether the broker announces the service ``offline`` when its connection is lost (MQTT's last
    # will). Without one (AMQP) the service repeats its ``online`` status every heartbeat, and the
    # alerts service judges it offline when the heartbeats stop.
    last_will: bool

    def connect(self, subscriptions: Sequence[str]) -> AbstractAsyncContextManager[Connection]: ...
