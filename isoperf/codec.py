"""Payload encoding: MessagePack maps by default, JSON when the payload starts with ``{``.

JSON is accepted so that any MQTT tool (mosquitto_pub, MQTT Explorer) can
publish by hand; everything isoperf itself publishes is MessagePack.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from pydantic import BaseModel

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576


class DecodeError(ValueError):
    """A payload that cannot be turned into a map: the reason is in the message."""


def encode(message: BaseModel) -> bytes:
    """Encode a model as a MessagePack map, leaving out fields that are ``None``."""
    packed: bytes = msgpack.packb(message.model_dump(mode="json", exclude_none=True), use_bin_type=True)
    return packed


def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Decode a payload into a map; raise :class:`DecodeError` with the reason."""
    if len(payload) > max_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    if not payload:
        raise DecodeError("empty payload")
    try:
        # strict_map_key: keys must be str/bytes; bin payloads stay bytes.
        data = json.loads(payload) if payload[:1] == b"{" else msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"not MessagePack or JSON: {exc}") from exc
    except RecursionError:  # JSON nested deeper than the interpreter's stack (MessagePack stops at its own limit)
        raise DecodeError("nested too deeply") from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a map, got {type(data).__name__}")
    return data
