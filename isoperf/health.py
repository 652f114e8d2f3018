"""``isoperf health SERVICE``: exit 0 if the service's retained MQTT status says ``online``.

For container health checks: run with the service's own environment, it reads
``{root}/status/{SERVICE}/{ISOPERF_INSTANCE}`` from the broker (the service
publishes ``online`` once it is subscribed, and the broker publishes its
``offline`` last will if it dies).
"""

from __future__ import annotations

import asyncio
import sys

import aiomqtt

from isoperf.mqtt import tool_client
from isoperf.settings import ServiceSettings
from isoperf.topics import Topics


async def status(settings: ServiceSettings, service: str, timeout_s: float = 5.0) -> str | None:
    topic = Topics(settings.mqtt_root).status(service, settings.instance)
    async with tool_client(settings) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    return bytes(message.payload).decode() if isinstance(message.payload, bytes | bytearray) else None
        except TimeoutError:
            return None
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: isoperf health SERVICE", file=sys.stderr)
        return 2
    try:
        got = asyncio.run(status(ServiceSettings(), argv[0]))
    except aiomqtt.MqttError as exc:
        print(f"unhealthy: broker: {exc}", file=sys.stderr)
        return 1
    print(got or "no status")
    return 0 if got == "online" else 1
