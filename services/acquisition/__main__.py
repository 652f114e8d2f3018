"""``isoperf acquisition``: read the theatre equipment (here: the simulator) and publish it."""

from __future__ import annotations

import asyncio
import json
import logging

from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.mqtt import MqttService, Outbox
from services.acquisition.playback import Playback
from services.acquisition.settings import AcquisitionSettings
from services.acquisition.simulator import SimulatedSession, simulate

log = logging.getLogger(__name__)


def write_truth(session: SimulatedSession, path: object) -> None:
    """The simulated truth goes to a file of its own, never onto a clinical topic."""
    from pathlib import Path

    p = Path(str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for t, pct in session.truth:
            f.write(json.dumps({"t": t, "leakage_pct": pct}) + "\n")


async def run(settings: AcquisitionSettings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    cfg = settings.sim_config()
    session = simulate(cfg, settings.sim_seed)
    if settings.sim_truth_file is not None:
        write_truth(session, settings.sim_truth_file)
    outbox = Outbox()
    mqtt = MqttService(settings, "acquisition", outbox=outbox)
    playback = Playback(mqtt.topics, outbox, settings.theatre, settings.session)
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

    async def play() -> None:
        await playback.run(session.timeline(), cfg.start_t, settings.sim_speed, settings.publish_tick_s, stop)
        log.info(
            "session played: %d readings, %d events, %d lab results",
            playback.published_readings,
            playback.published_events,
            playback.published_samples,
        )
        stop.set()  # the simulated device has nothing more to say: drain and exit

    player = asyncio.create_task(play())
    await mqtt.run(stop)
    await player


def main() -> None:
    settings = AcquisitionSettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
