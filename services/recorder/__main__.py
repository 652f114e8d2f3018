"""``isoperf recorder``: store what is published on the bus in InfluxDB."""

from __future__ import annotations

from isoperf.service import Wiring, main_for
from services.recorder.handler import RecorderHandler
from services.recorder.settings import RecorderSettings


def main() -> None:
    def make(settings: RecorderSettings, wiring: Wiring) -> RecorderHandler:
        return RecorderHandler(wiring.writer, wiring.topics, wiring.link)

    main_for("recorder", RecorderSettings, make)


if __name__ == "__main__":
    main()
