"""``isoperf alerts``: alerts on leakage, published at once and kept in the record."""

from __future__ import annotations

from pathlib import Path

from isoperf.runner import main_for
from isoperf.settings import ServiceSettings
from services.alerts.handler import AlertsHandler
from services.alerts.rules import AlertRules


class AlertsSettings(ServiceSettings):
    alerts_state_file: Path = Path(".isoperf/alerts-state.json")


def main() -> None:
    def make(settings, topics, link, influx, writer):  # type: ignore[no-untyped-def]
        assert isinstance(settings, AlertsSettings)
        return AlertsHandler(topics, link, writer, AlertRules(), settings.alerts_state_file, settings.max_payload_bytes)

    main_for("alerts", make, AlertsSettings)


if __name__ == "__main__":
    main()
