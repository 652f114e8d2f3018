"""MQTT on Mosquitto through aiomqtt: persistent sessions, QoS 1, acknowledgement after storage.

* ``clean_session=False`` and a fixed client id: the broker keeps what a service has
  not acknowledged while it is away or restarting.
* A message is acknowledged only when the runtime says its results are stored
  (:class:`isoperf.sources.mqtt_ack.ManualAck`).
* The service's retained ``offline`` status is the connection's last will.
* Nagle's algorithm off: small readings would otherwise wait ~40 ms a hop.
* TLS when ``ISOPERF_MQTT_TLS`` is set: the broker's certificate and name are verified.
* A lost connection whose socket closed before the event loop could start watching it is a
  warning, not an error (:func:`tolerate_closed_sockets`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from isoperf.outbox import WINDOW as OUTBOX_WINDOW
from isoperf.settings import ServiceSettings
from isoperf.sources import Connection, ConnectionLost, Delivery
from isoperf.sources.mqtt_ack import ManualAck
from isoperf.tls import client_context, probe

log = logging.getLogger(__name__)


def _password(settings: ServiceSettings) -> str | None:
    return settings.mqtt_password.get_secret_value() if settings.mqtt_password else None


def tls_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    """The verifying TLS context of ``settings`` (``None``: plain MQTT). The broker's certificate is
    checked against ``ISOPERF_MQTT_CA_FILE`` (or the system's store), its name against the host."""
    if not settings.mqtt_tls:
        return None
    return client_context(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file)


def broker_name(settings: ServiceSettings) -> str:
    return f"{'mqtts' if settings.mqtt_tls else 'mqtt'}://{settings.mqtt_host}:{settings.mqtt_port}"


_properties: Callable[[int], Properties] = Properties  # paho's constructor, untyped
SESSION_KEPT_S = 0xFFFFFFFF  # MQTT 5: the broker keeps the session (and what it holds) for ever


def _closed_socket_race(context: dict[str, Any]) -> bool:
    """aiomqtt asks the event loop, from paho's callbacks, to watch the socket "soon"; when the broker
    drops the connection in between, the socket is closed first and the loop's ``add_writer`` (or
    ``add_reader``) fails with EBADF. The connection is gone either way; the consume loop reconnects."""
    exc, handle = context.get("exception"), context.get("handle")
    return (
        isinstance(exc, OSError)
        and exc.errno == errno.EBADF
        and isinstance(handle, asyncio.Handle)
        and any(f".{name}(" in repr(handle) for name in ("add_writer", "add_reader"))
    )


def tolerate_closed_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """Log aiomqtt's closed-socket race (:func:`_closed_socket_race`) as a warning without a traceback;
    every other error of the loop goes to the handler it had (or the default one). Installed once."""
    previous = loop.get_exception_handler()
    if getattr(previous, "tolerates_closed_sockets", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _closed_socket_race(context):
            log.warning(
                "MQTT: the socket closed before the event loop watched it (%s); the connection is lost",
                context["exception"],
            )
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.tolerates_closed_sockets = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


class BrokerRefused(aiomqtt.MqttError):
    """The broker could not be reached or refused this client, with the reason spelt out."""


async def connect_error(settings: ServiceSettings, exc: aiomqtt.MqttError) -> str:
    """A clear reason for a failed connection: the broker's address, and what TLS found wrong."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"{broker_name(settings)}: TLS: the broker's certificate was refused ({cause.verify_message}); "
            f"check ISOPERF_MQTT_CA_FILE and that {settings.mqtt_host!r} is a name in the certificate"
        )
    reason = str(exc)
    if "code:13" not in reason:  # not a refusal of the credentials (134, 135): look at TLS
        found = await asyncio.to_thread(probe, settings.mqtt_host, settings.mqtt_port, tls_context(settings))
        if found is not None:
            hint = "" if settings.mqtt_tls else ": set ISOPERF_MQTT_TLS=true and ISOPERF_MQTT_CA_FILE"
            reason = f"{reason}; {found}{hint}"
    return f"{broker_name(settings)}: {reason}"


@asynccontextmanager
async def tool_client(settings: ServiceSettings) -> AsyncIterator[aiomqtt.Client]:
    """A short-lived client for command-line tools (ack, silence, samples, health checks), connected
    with the broker address, credentials and TLS settings of ``settings``; a failure to connect is a
    :class:`BrokerRefused` that says why."""
    client = aiomqtt.Client(
        settings.mqtt_host,
        settings.mqtt_port,
        username=settings.mqtt_username,
        password=_password(settings),
        tls_context=tls_context(settings),
    )
    connected = False
    try:
        async with client:
            connected = True
            yield client
    except aiomqtt.MqttError as exc:
        if connected:
            raise
        raise BrokerRefused(await connect_error(settings, exc)) from None


class MqttConnection:
    """One live connection: deliveries in, acknowledgements and publications out."""

    def __init__(self, client: aiomqtt.Client, acks: ManualAck) -> None:
        self._client, self._acks = client, acks
        self._messages = aiter(client.messages)

    def backlog(self) -> int:
        return len(self._client.messages)

    async def receive(self) -> Delivery:
        try:
            message = await anext(self._messages)
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(str(exc)) from exc
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        return Delivery(message.topic.value, bytes(payload), message.mid, message.qos)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._acks.ack(d.token, d.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(str(exc)) from exc


class MqttSource:
    """Connections of one service to the broker named in its settings."""

    def __init__(
        self, settings: ServiceSettings, client_id: str, will_topic: str | None, *, persistent: bool = True
    ) -> None:
        self.settings, self.client_id, self.will_topic, self.persistent = settings, client_id, will_topic, persistent
        self.name = broker_name(settings)
        self.last_will = will_topic is not None
        self._tls = tls_context(settings)

    def _session_options(self) -> dict[str, Any]:
        """MQTT 5: a clean start or not, the Receive Maximum and the session kept; MQTT 3.1.1 (a broker
        without MQTT 5): a persistent session, and the broker's own in-flight limit."""
        if self.settings.mqtt_protocol == "3.1.1":
            return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": not self.persistent}
        return {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": not self.persistent,
            "properties": self._connect_properties(),
        }

    def _connect_properties(self) -> Properties:
        props = _properties(PacketTypes.CONNECT)
        # How many unacknowledged QoS 1 messages the broker may send before waiting for acks.
        props.ReceiveMaximum = self.settings.mqtt_receive_maximum
        if self.persistent:  # MQTT 5 ends a session at disconnect unless told to keep it
            props.SessionExpiryInterval = SESSION_KEPT_S
        return props

    @asynccontextmanager
    async def connect(self, subscriptions: Sequence[str]) -> AsyncIterator[Connection]:
        s = self.settings
        tolerate_closed_sockets(asyncio.get_running_loop())
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=_password(s),
            identifier=self.client_id,
            **self._session_options(),
            keepalive=s.mqtt_keepalive_s,
            will=aiomqtt.Will(self.will_topic, b"offline", qos=1, retain=True) if self.will_topic else None,
            max_inflight_messages=100,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            tls_context=self._tls,
        )
        # The outbox keeps up to a window of publications in flight: not a backlog worth a warning.
        client.pending_calls_threshold = 10 * OUTBOX_WINDOW
        acks = ManualAck(client)
        connected = False
        try:
            async with client:
                connected = True
                for sub in subscriptions:
                    await client.subscribe(sub, qos=1)
                yield MqttConnection(client, acks)
        except aiomqtt.MqttError as exc:
            reason = f"{self.name}: {exc}" if connected else await connect_error(s, exc)
            raise ConnectionLost(reason) from exc
