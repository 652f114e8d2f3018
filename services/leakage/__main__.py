"""``isoperf leakage``: systemic leakage from the precordial probe, live."""

from __future__ import annotations

from isoperf.runner import main_for
from services.leakage.handler import LeakageHandler
from services.leakage.settings import LeakageSettings


def main() -> None:
    def make(settings, topics, link, influx, writer):  # type: ignore[no-untyped-def]
        assert isinstance(settings, LeakageSettings)
        return LeakageHandler(topics, link, writer, influx, settings.estimator_params(), settings.max_payload_bytes)

    main_for("leakage", make, LeakageSettings)


if __name__ == "__main__":
    main()
