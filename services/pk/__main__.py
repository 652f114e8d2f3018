"""``isoperf pk``: melphalan pharmacokinetics, live and from the lab."""

from __future__ import annotations

from isoperf.service import Wiring, main_for
from services.pk.handler import PkHandler
from services.pk.settings import PkSettings


def main() -> None:
    def make(settings: PkSettings, wiring: Wiring) -> PkHandler:
        return PkHandler(
            wiring.topics, wiring.link, wiring.writer, wiring.influx, settings.pk_interval_s, settings.pk_hold_s
        )

    main_for("pk", PkSettings, make)


if __name__ == "__main__":
    main()
