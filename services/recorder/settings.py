"""Settings of the recorder: the shared ones (the broker, InfluxDB, limits); it has none of its own."""

from __future__ import annotations

from isoperf.settings import ServiceSettings


class RecorderSettings(ServiceSettings):
    pass
