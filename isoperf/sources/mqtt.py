"""MQTT on Mosquitto through aiomqtt: persistent sessions, QoS 1, acknowledgement after storage.

* ``clean_session=False`` and a fixed client id: the broker keeps what a service has
  not acknowledged while it is away or restarting.
* A message is acknowledged only when the runtime says its results are stored
  (:class:`isoperf.sources.mqtt_ack.ManualAck`).
* The service's retained ``offline`` status is the connection's last will.
* Nagle's algorithm off: small readings would otherwise wait ~40 ms a hop.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiomqtt

from isoperf.settings import ServiceSettings
from isoperf.sources import Connection, ConnectionLost, Delivery
from isoperf.sources.mqtt_ack import ManualAck


def _password(settings: ServiceSettings) -> str | None:
    return settings.mqtt_password.get_secret_value() if settings.mqtt_password else None


def tool_client(settings: ServiceSettings) -> aiomqtt.Client:
    """A short-lived client for command-line tools (ack, silence, samples, health checks),
    with the broker address and credentials of ``settings``."""
    return aiomqtt.Client(
        settings.mqtt_host, settings.mqtt_port, username=settings.mqtt_username, password=_password(settings)
    )


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
        self.name = f"mqtt://{settings.mqtt_host}:{settings.mqtt_port}"

    @asynccontextmanager
    async def connect(self, subscriptions: Sequence[str]) -> AsyncIterator[Connection]:
        s = self.settings
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=_password(s),
            identifier=self.client_id,
            clean_session=not self.persistent,
            keepalive=s.mqtt_keepalive_s,
            will=aiomqtt.Will(self.will_topic, b"offline", qos=1, retain=True) if self.will_topic else None,
            max_inflight_messages=100,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        acks = ManualAck(client)
        try:
            async with client:
                for sub in subscriptions:
                    await client.subscribe(sub, qos=1)
                yield MqttConnection(client, acks)
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(str(exc)) from exc
