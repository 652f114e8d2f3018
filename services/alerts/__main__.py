"""``isoperf alerts``: alerts on leakage, published at once, sent to the team, kept in the record."""

from __future__ import annotations

from isoperf.service import Wiring, main_for
from services.alerts.channels import Notifier
from services.alerts.handler import AlertsHandler
from services.alerts.rules import AlertRules
from services.alerts.settings import AlertsSettings


def main() -> None:
    def make(settings: AlertsSettings, wiring: Wiring) -> AlertsHandler:
        # The InfluxDB client's HTTP session serves the webhooks too; it lives as long as the service.
        session = wiring.influx.session
        notifier = Notifier(
            settings.channels(session), settings.channels(session, escalation=True), record=wiring.writer
        )
        return AlertsHandler(
            wiring.topics,
            wiring.link,
            wiring.writer,
            AlertRules.from_file(settings.alerts_rules_file),
            settings.alerts_state_file,
            notifier,
            own_name=f"alerts/{settings.instance}",
            hold_s=settings.alerts_hold_s,
            # On a cluster, another instance may take a session over: its state is kept in InfluxDB.
            shared=wiring.influx if settings.transport == "amqp" else None,
            # No last will on AMQP: the consumers' heartbeats stopping is how they go offline.
            heartbeat_expiry_s=3 * settings.heartbeat_s if settings.transport == "amqp" else None,
        )

    main_for("alerts", AlertsSettings, make)


if __name__ == "__main__":
    main()
