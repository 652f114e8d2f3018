"""Acknowledging an MQTT message after its results are stored, on aiomqtt.

aiomqtt 2.x acknowledges a QoS 1 message on receipt and has no public API to do it
later. The workaround, posted by a user in aiomqtt issue #345 and not an API of the
maintainers', reaches through to the wrapped paho client: ``manual_ack_set(True)``
before connecting, then ``ack(mid, qos)`` per message. It rests on a private
attribute, so this adapter is the only place that touches it, and it refuses to run
with an aiomqtt other than the one it was tested with (pinned in pyproject.toml).
"""

from __future__ import annotations

from importlib.metadata import version

import aiomqtt

TESTED_AIOMQTT = ("2.5.",)


class ManualAck:
    """Switches a client to manual acknowledgement; ``ack`` releases one message."""

    def __init__(self, client: aiomqtt.Client) -> None:
        installed = version("aiomqtt")
        if not installed.startswith(TESTED_AIOMQTT):
            raise RuntimeError(
                f"aiomqtt {installed} is installed; acknowledging after storage is tested with "
                f"{', '.join(v + 'x' for v in TESTED_AIOMQTT)} only (see isoperf/sources/mqtt_ack.py)"
            )
        self._paho = client._client
        self._paho.manual_ack_set(True)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._paho.ack(mid, qos)
