"""``isoperf replay``: a stored session published back onto the bus under a new session id.

For rehearsal and teaching, and to try a changed estimator or alert rule on real past sessions.
Everything the recorder stored (session metadata, events, lab results, every reading with its
counting interval) is played through the gateway's own path (journal, confirmation by the
recorder), with the original event times, in real time (``--speed 1``), N times faster, or as
fast as the broker takes it (``--speed 0``). Lab results go out at their draw time (the
record keeps no report time). The replay announces no service status, so it raises no
"service offline" alarm when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from isoperf.influx import InfluxClient, Row
from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.queries import session_where
from isoperf.runtime import ServiceLoop
from isoperf.schemas import Event, LabSample, Reading, SessionMeta
from isoperf.service import source_for
from isoperf.topics import Topics, check_id
from services.acquisition.gateway import Gateway, run_gateway
from services.acquisition.journal import Journal
from services.acquisition.playback import Item, Playback
from services.acquisition.settings import AcquisitionSettings

log = logging.getLogger(__name__)

META_FIELDS = ("procedure", "isotope", "weight_kg", "circuit_volume_ml", "melphalan_mg_per_kg")
EVENT_FIELDS = ("activity_mbq", "dose_mg", "mode", "duration_s", "volume_ml", "text")


class StoredSession:
    """One stored session's inputs, read from InfluxDB."""

    def __init__(self, meta: SessionMeta, events: list[Event], samples: list[LabSample], readings: list[Row]):
        self.meta, self.events, self.samples, self.readings = meta, events, samples, readings

    @classmethod
    async def load(cls, influx: InfluxClient, theatre: str, session: str) -> StoredSession:
        w = session_where(theatre, session)
        meta_rows = await influx.rows(f"SELECT * FROM session WHERE {w} ORDER BY time DESC LIMIT 1")
        if not meta_rows:
            raise LookupError(f"no stored session {theatre}/{session}")
        m = meta_rows[0]
        thresholds = json.loads(m["thresholds"]) if m.get("thresholds") else None  # the session's own alert levels
        meta = SessionMeta.model_validate(
            {"t": m["time"] / 1000.0, **{f: m[f] for f in META_FIELDS}, "thresholds": thresholds}
        )
        events = [
            Event.model_validate(
                {"t": r["time"] / 1000.0, "type": r["type"], **{f: r[f] for f in EVENT_FIELDS if r.get(f) is not None}}
            )
            for r in await influx.rows(f'SELECT * FROM event WHERE {w} GROUP BY "type" ORDER BY time')
        ]
        samples = [
            LabSample.model_validate(
                {"t": r["time"] / 1000.0, "site": r["site"], "melphalan_ug_ml": float(r["melphalan_ug_ml"])}
                | ({"sample_id": r["sample_id"]} if r.get("sample_id") else {})
                | ({"reported_t": r["reported_t"]} if r.get("reported_t") is not None else {})
            )
            for r in await influx.rows(f'SELECT * FROM sample WHERE {w} GROUP BY "site" ORDER BY time')
        ]
        readings = await influx.rows(f'SELECT value, dt FROM reading WHERE {w} GROUP BY "signal" ORDER BY time')
        return cls(meta, sorted(events, key=lambda e: e.t), sorted(samples, key=lambda s: s.t), readings)

    def timeline(self) -> Iterator[Item]:
        """Everything in event-time order, an event first at equal times (as the gateway sent it)."""
        items: list[tuple[float, int, str, Any]] = [(e.t, 0, "event", e) for e in self.events]
        # A lab result when it was reported, as the gateway sent it (its draw time, if not known).
        items.extend((s.reported_t or s.t, 1, "sample", s) for s in self.samples)
        for r in self.readings:
            t = r["time"] / 1000.0
            items.append((t, 1, str(r["signal"]), Reading(t=t, v=float(r["value"]), dt=float(r.get("dt") or 1.0))))
        items.sort(key=lambda x: (x[0], x[1]))
        for t, _, kind, item in items:
            yield t, kind, item


async def replay(settings: AcquisitionSettings, theatre: str, session: str, new: str, speed: float) -> int:
    async with InfluxClient(settings) as influx:
        try:
            stored = await StoredSession.load(influx, theatre, session)
        except LookupError as exc:
            print(f"isoperf replay: {exc}", file=sys.stderr)
            return 1
    topics = Topics(settings.mqtt_root)
    journal = Journal(settings.journal_dir / f"replay-{theatre}-{new}.sqlite")
    gateway = Gateway(journal, topics, theatre)
    # A client of its own, not kept by the broker after the replay: several replays may run at once.
    source = source_for(settings.model_copy(update={"instance": new}), "replay", announce=False, persistent=False)
    loop = ServiceLoop(settings, "replay", source, handler=gateway, sender=gateway, announce=False, theatre=theatre)
    playback = Playback(topics, gateway, theatre, new)
    stop = asyncio.Event()
    stop_on_signals(stop)
    playback.publish_meta(stored.meta)
    print(
        f"replaying {theatre}/{session} as {theatre}/{new}: {len(stored.readings)} readings, "
        f"{len(stored.events)} events, {len(stored.samples)} lab results, speed {speed:g}"
    )

    async def play() -> None:
        await playback.run(stored.timeline(), stored.meta.t, speed, 0.25, stop)
        try:
            async with asyncio.timeout(settings.journal_drain_s):
                await gateway.wait_empty()
        except TimeoutError:
            log.warning(
                "%d messages unconfirmed after %.0f s: is the recorder running?", len(gateway), settings.journal_drain_s
            )
        left.append(len(gateway))
        stop.set()

    left: list[int] = []
    await run_gateway(loop, play(), stop, journal)
    left = left or [-1]
    print(f"done: {gateway.published} messages published, {gateway.confirmed} confirmed stored, {left[0]} unconfirmed")
    return 0 if left == [0] else 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "replay",
        help="publish a stored session again under a new session id",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("theatre")
    ap.add_argument("session")
    ap.add_argument("--as", dest="new", help="the new session id (default: SESSION-replay)")
    ap.add_argument("--speed", type=float, default=0.0, help="1 real time, N times faster, 0 as fast as possible")
    ap.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    settings = AcquisitionSettings()
    configure_logging(settings.log_level)
    theatre, session = check_id(args.theatre, "theatre"), check_id(args.session, "session")
    new = check_id(args.new or f"{session}-replay"[:64], "session")
    if new == session:
        print("isoperf replay: --as must name a new session id", file=sys.stderr)
        return 2
    return asyncio.run(replay(settings, theatre, session, new, args.speed))
