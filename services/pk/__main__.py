"""``isoperf pk``: melphalan pharmacokinetics, live and from the lab."""

from __future__ import annotations

from pydantic import Field

from isoperf.runner import main_for
from isoperf.settings import ServiceSettings
from services.pk.handler import PkHandler


class PkSettings(ServiceSettings):
    pk_interval_s: float = Field(default=15.0, gt=0.0)  # event time between estimates while leakage comes


def main() -> None:
    def make(settings, topics, link, influx, writer):  # type: ignore[no-untyped-def]
        assert isinstance(settings, PkSettings)
        return PkHandler(topics, link, writer, influx, settings.max_payload_bytes, settings.pk_interval_s)

    main_for("pk", make, PkSettings)


if __name__ == "__main__":
    main()
