"""``isoperf leakage``: systemic leakage from the precordial probe, live."""

from __future__ import annotations

from isoperf.service import Wiring, main_for
from services.leakage.handler import LeakageHandler
from services.leakage.settings import LeakageSettings


def main() -> None:
    def make(settings: LeakageSettings, wiring: Wiring) -> LeakageHandler:
        return LeakageHandler(wiring.topics, wiring.link, wiring.writer, wiring.influx, settings.estimator_params())

    main_for("leakage", LeakageSettings, make)


if __name__ == "__main__":
    main()
