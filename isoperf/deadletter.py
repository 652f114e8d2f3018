"""Bad input is logged with its reason, counted and kept aside in a JSON-lines file."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_BYTES = 65_536  # of a payload, in the dead-letter file; its full size is recorded


class DeadLetters:
    """Appends one JSON record per rejected message to ``{directory}/{service}.jsonl``."""

    def __init__(self, directory: Path, service: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{service}.jsonl"
        self.count = 0

    def keep(self, topic: str, payload: bytes, reason: str) -> None:
        self.count += 1
        log.warning(
            "rejected message on %s (%d bytes): %s; payload starts %r", topic, len(payload), reason, payload[:80]
        )
        record = {
            "received": time.time(),
            "topic": topic,
            "reason": reason,
            "size": len(payload),
            "payload_b64": base64.b64encode(payload[:KEEP_BYTES]).decode(),
            "truncated": len(payload) > KEEP_BYTES,
        }
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
