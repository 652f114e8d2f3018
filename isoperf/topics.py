"""Building and parsing the MQTT topics of the public interface."""

from __future__ import annotations

import re
from dataclasses import dataclass

from isoperf.schemas import SESSION_MESSAGES, SIGNALS

_ID = re.compile(r"[a-z0-9-]{1,64}")


class TopicError(ValueError):
    """A topic that is not part of the interface."""


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid theatre or session id, else raise ``ValueError``."""
    if not _ID.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match [a-z0-9-]{{1,64}}")
    return value


@dataclass(frozen=True)
class SessionTopic:
    """A parsed session topic: ``kind`` is ``raw`` (with ``signal``) or one of SESSION_MESSAGES."""

    theatre: str
    session: str
    kind: str
    signal: str | None = None


class Topics:
    """Topic names under one root (``perfusion`` by default)."""

    def __init__(self, root: str = "perfusion") -> None:
        if not root or "+" in root or "#" in root or root.endswith("/"):
            raise ValueError(f"invalid topic root {root!r}")
        self.root = root

    def session(self, theatre: str, session: str, kind: str) -> str:
        if kind not in SESSION_MESSAGES:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.root}/{check_id(theatre, 'theatre')}/{check_id(session, 'session')}/{kind}"

    def raw(self, theatre: str, session: str, signal: str) -> str:
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        return f"{self.root}/{check_id(theatre, 'theatre')}/{check_id(session, 'session')}/raw/{signal}"

    def status(self, service: str, instance: str) -> str:
        return f"{self.root}/status/{check_id(service, 'service')}/{check_id(instance, 'instance')}"

    def status_subscription(self) -> str:
        return f"{self.root}/status/+/+"

    def parse_status(self, topic: str) -> str | None:
        """``service/instance`` of a status topic, or None if ``topic`` is not one."""
        prefix = f"{self.root}/status/"
        if not topic.startswith(prefix) or topic.count("/") != prefix.count("/") + 1:
            return None
        return topic[len(prefix) :]

    @staticmethod
    def status_payload(service: str, payload: bytes) -> str:
        """``online`` or ``offline``; anything else is a ``ValueError`` (bad input, kept aside)."""
        status = payload.strip().decode("utf-8", "replace")
        if status not in ("online", "offline"):
            raise ValueError(f"status of {service} must be 'online' or 'offline', not {status[:40]!r}")
        return status

    def subscription(self, kind: str, theatre: str | None = None) -> str:
        """Wildcard filter for one kind across every session of every theatre, or of one theatre
        (``raw/+`` for readings)."""
        return f"{self.root}/{check_id(theatre, 'theatre') if theatre else '+'}/+/{kind}"

    def parse(self, topic: str) -> SessionTopic:
        """Parse a session topic, validating ids, kind and signal."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            raise TopicError(f"topic {topic!r} is not under {self.root!r}")
        parts = topic[len(prefix) :].split("/")
        if len(parts) < 3:
            raise TopicError(f"topic {topic!r} is too short")
        theatre, session, rest = parts[0], parts[1], parts[2:]
        try:
            check_id(theatre, "theatre")
            check_id(session, "session")
        except ValueError as exc:
            raise TopicError(str(exc)) from exc
        if len(rest) == 2 and rest[0] == "raw":
            if rest[1] not in SIGNALS:
                raise TopicError(f"unknown signal {rest[1]!r} in {topic!r}")
            return SessionTopic(theatre, session, "raw", rest[1])
        kind = "/".join(rest)
        if kind not in SESSION_MESSAGES:
            raise TopicError(f"unknown kind {kind!r} in {topic!r}")
        return SessionTopic(theatre, session, kind)
