"""Configuration from the environment (``ISOPERF_*``), built in ``main()`` and passed down.

Every variable is listed in docs/configuration.md; ``deploy/.env.example``
documents them for a deployment.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from isoperf.codec import DEFAULT_MAX_PAYLOAD_BYTES


def _default_instance() -> str:
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower())
    return (name.strip("-") or "local")[:64]


class ServiceSettings(BaseSettings):
    """Settings every service shares: where the broker and the database are."""

    model_config = SettingsConfigDict(env_prefix="ISOPERF_", extra="ignore")

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_root: str = "perfusion"
    mqtt_keepalive_s: int = Field(default=30, ge=5)

    influx_url: str = "http://127.0.0.1:8086"
    influx_database: str = "perfusion"
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    # InfluxDB 2.x/3.x compatibility API: a token sent as ``Authorization: Token ...``.
    influx_token: SecretStr | None = None

    instance: str = Field(default_factory=_default_instance)
    deadletter_dir: Path = Path(".isoperf/deadletter")
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024)
    # Results are flushed when the inbox is idle, or at these limits.
    flush_max_messages: int = Field(default=500, ge=1)
    flush_max_delay_s: float = Field(default=0.5, gt=0.0)
    drain_timeout_s: float = Field(default=10.0, gt=0.0)
    log_level: str = "INFO"
    # The hospital's time zone (IANA name), for local wall times in reports and listings.
    timezone: str = "UTC"
