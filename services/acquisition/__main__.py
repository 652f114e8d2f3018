"""``isoperf acquisition``: read the theatre equipment (here: the simulator) and publish it."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.runtime import ServiceLoop
from isoperf.service import source_for
from isoperf.topics import Topics
from services.acquisition.equipment import Equipment
from services.acquisition.gateway import Gateway, run_gateway
from services.acquisition.journal import Journal
from services.acquisition.playback import Playback
from services.acquisition.settings import AcquisitionSettings
from services.acquisition.simulator import SimulatedSession, simulate

log = logging.getLogger(__name__)


def write_truth(session: SimulatedSession, path: Path) -> None:
    """The simulated truth goes to a file of its own, never onto a clinical topic."""
    p = path
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for t, pct in session.truth:
            f.write(json.dumps({"t": t, "leakage_pct": pct}) + "\n")


async def run(settings: AcquisitionSettings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    topics = Topics(settings.mqtt_root)
    journal_file = settings.journal_dir / f"{settings.theatre}.sqlite"
    journal = Journal(journal_file, settings.journal_max_bytes, sync_full=settings.journal_sync_full)
    gateway = Gateway(
        journal, topics, settings.theatre, settings.journal_resend_after_s, settings.journal_warn_fraction
    )
    backlog = journal.backlog()
    if backlog.messages:
        log.info(
            "journal %s holds %d unconfirmed messages from before: sending them first", journal.path, backlog.messages
        )
    source = source_for(settings, "acquisition")
    loop = ServiceLoop(settings, "acquisition", source, handler=gateway, sender=gateway, theatre=settings.theatre)
    playback = Playback(topics, gateway, settings.theatre, settings.session)
    if settings.device == "profiles":
        if settings.session_meta is not None:
            playback.publish_meta(settings.session_meta)
        equipment = Equipment(settings.device_profiles, playback, loop.deadletters, settings.publish_tick_s)
        work = equipment.run(stop)
    else:
        work = simulate_session(settings, playback, gateway, stop)
    await run_gateway(loop, work, stop, journal)
    log.info("acquisition stopped: %d messages published, %d confirmed stored", gateway.published, gateway.confirmed)


async def simulate_session(
    settings: AcquisitionSettings, playback: Playback, gateway: Gateway, stop: asyncio.Event
) -> None:
    """Play the simulator's session; once the recorder has confirmed all of it, stop."""
    cfg = settings.sim_config()
    session = simulate(cfg, settings.sim_seed)
    if settings.sim_truth_file is not None:
        write_truth(session, settings.sim_truth_file)
    log.info(
        "simulating %s session %s/%s: %s, leak %s, %.0f min at speed %g",
        cfg.procedure,
        settings.theatre,
        settings.session,
        cfg.isotope,
        cfg.leak.kind,
        cfg.duration_s / 60,
        settings.sim_speed,
    )
    playback.publish_meta(session.meta)
    await playback.run(session.timeline(), cfg.start_t, settings.sim_speed, settings.publish_tick_s, stop)
    log.info(
        "session played: %d readings, %d events, %d lab results; waiting for the recorder to confirm them",
        playback.published_readings,
        playback.published_events,
        playback.published_samples,
    )
    try:
        async with asyncio.timeout(settings.journal_drain_s):
            await gateway.wait_empty()
    except TimeoutError:
        log.warning("%d messages unconfirmed after %.0f s: kept in the journal", len(gateway), settings.journal_drain_s)
    stop.set()  # the simulated device has nothing more to say: exit


def main() -> None:
    settings = AcquisitionSettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
