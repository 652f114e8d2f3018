"""``isoperf recorder``: store what is published on the bus in InfluxDB."""

from __future__ import annotations

from isoperf.runner import main_for
from services.recorder.handler import RecorderHandler


def main() -> None:
    main_for(
        "recorder",
        lambda settings, topics, link, influx, writer: RecorderHandler(topics, writer, settings.max_payload_bytes),
    )


if __name__ == "__main__":
    main()
