"""``isoperf ack`` and ``isoperf silence``: acknowledge or silence alerts from the command line.

Both publish on the interface's MQTT topics (QoS 1), exactly as a theatre screen
would, so the alerts service records them like any other. ``isoperf ack THEATRE
SESSION`` without an alert id lists what is firing (from InfluxDB).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from pydantic import BaseModel

from isoperf.codec import encode
from isoperf.influx import InfluxClient
from isoperf.queries import session_where
from isoperf.schemas import AlertAck, AlertSilence
from isoperf.settings import ServiceSettings
from isoperf.sources.mqtt import tool_client
from isoperf.topics import Topics, check_id
from services.alerts.rules import RULE_NAMES


async def _publish(settings: ServiceSettings, topic: str, message: BaseModel) -> None:
    async with tool_client(settings) as client:
        await client.publish(topic, encode(message), qos=1)


async def firing(settings: ServiceSettings, theatre: str, session: str) -> list[dict[str, object]]:
    """The alerts of a session whose latest record is ``firing``, one per rule."""
    q = (
        "SELECT last(status) AS status, last(id) AS id, last(message) AS message FROM alert "
        f'WHERE {session_where(theatre, session)} GROUP BY "rule"'
    )
    async with InfluxClient(settings) as influx:
        return [r for r in await influx.rows(q) if r["status"] == "firing"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "ack",
        help="acknowledge a firing alert, or list them",
        description="Acknowledge a firing alert (stops its reminders).",
    )
    ap.add_argument("theatre")
    ap.add_argument("session")
    ap.add_argument("alert_id", nargs="?", help="without it: list the alerts firing in the session")
    ap.add_argument("--by", help="who acknowledges (name or role), kept in the record")
    ap.set_defaults(run=lambda args: _ack(ap, args))
    si = commands.add_parser(
        "silence",
        help="silence a session's alerts, or one rule, for a while",
        description="Mute an alert rule's notifications in a session for a while.",
    )
    si.add_argument("theatre")
    si.add_argument("session")
    si.add_argument("--rule", choices=sorted(RULE_NAMES), help="one rule (default: every rule of the session)")
    si.add_argument("--minutes", type=float, required=True, help="how long; 0 lifts the matching silences")
    si.add_argument("--reason", required=True, help="why, kept in the record")
    si.add_argument("--by", required=True, help="who silences (name or role), kept in the record")
    si.set_defaults(run=_silence)


def _ack(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
    if args.alert_id is None:
        now = asyncio.run(firing(settings, theatre, session))
        if not now:
            print(f"No alert is firing in {theatre}/{session}.")
        for r in now:
            print(f"{r['id']}  {r['rule']}: {r['message']}")
        return 0
    if not args.by:
        ap.error("--by is required to acknowledge")
    ack = AlertAck(t=time.time(), id=args.alert_id, by=args.by)
    asyncio.run(_publish(settings, Topics(settings.mqtt_root).session(theatre, session, "alert/ack"), ack))
    print(f"Acknowledgement of {args.alert_id} by {args.by} sent.")
    return 0


def _silence(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
    silence = AlertSilence(t=time.time(), rule=args.rule, duration_s=args.minutes * 60, reason=args.reason, by=args.by)
    asyncio.run(_publish(settings, Topics(settings.mqtt_root).session(theatre, session, "alert/silence"), silence))
    what = f"rule {args.rule}" if args.rule else "every rule"
    print(f"Silence of {what} in {theatre}/{session} for {args.minutes:g} min sent.")
    return 0
