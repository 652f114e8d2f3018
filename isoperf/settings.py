"""Configuration from the environment (``ISOPERF_*``), built in ``main()`` and passed down.

Every variable is listed in docs/configuration.md; ``deploy/.env.example``
documents them for a deployment.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
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
    # MQTT 5 (the default), or 3.1.1 for a broker without MQTT 5 (RabbitMQ 3.10's MQTT plugin).
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    # MQTT 5 Receive Maximum: unacknowledged messages the broker may have in flight to a service.
    # A batch is acknowledged once stored, so this bounds the batch; keep it above flush_max_messages.
    mqtt_receive_maximum: int = Field(default=4000, ge=1, le=65535)
    # TLS to the broker (port 8883 in production): the broker's certificate is verified against
    # the CA file (or the system's store) and its name against ``mqtt_host``.
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    # A client certificate and key, for a broker listener that authenticates clients by certificate.
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None

    # How consumers reach the broker: MQTT on Mosquitto (the default), or AMQP on a RabbitMQ cluster
    # (docs/scaling.md). Gateways and operators' tools always speak MQTT.
    transport: Literal["mqtt", "amqp"] = "mqtt"
    # The cluster's nodes, tried in turn (comma-separated amqp:// or amqps:// URLs).
    amqp_urls: str = "amqp://guest:guest@127.0.0.1:5672/"
    # For amqps:// URLs: the CA that signed the nodes' certificates (default: the system's store);
    # the certificate and the node's name are always verified.
    amqp_ca_file: Path | None = None
    # How many messages a consumer may hold unacknowledged (the AMQP prefetch).
    amqp_prefetch: int = Field(default=1000, ge=1)
    # On a cluster an instance consumes its share of the partitions (``partition_share``) first and
    # stands by for the others after this delay.
    amqp_standby_delay_s: float = Field(default=2.0, ge=0.0)

    influx_url: str = "http://127.0.0.1:8086"
    influx_database: str = "perfusion"
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    # InfluxDB 2.x/3.x compatibility API: a token sent as ``Authorization: Token ...``.
    influx_token: SecretStr | None = None
    # For an ``https://`` URL: the CA that signed InfluxDB's certificate (default: the system's store).
    influx_ca_file: Path | None = None

    instance: str = Field(default_factory=_default_instance)
    deadletter_dir: Path = Path(".isoperf/deadletter")
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024)
    # Results are flushed when the inbox is idle, or at these limits.
    flush_max_messages: int = Field(default=500, ge=1)
    flush_max_delay_s: float = Field(default=0.5, gt=0.0)
    drain_timeout_s: float = Field(default=10.0, gt=0.0)
    # A session's time window (isoperf/timewindow.py): an input stamped outside it is kept aside.
    window_before_s: float = Field(default=3600.0, gt=0.0)  # before the session's start
    window_after_s: float = Field(default=900.0, gt=0.0)  # after the session's latest input
    window_ahead_s: float = Field(default=300.0, gt=0.0)  # ahead of this service's clock
    window_confirm_s: float = Field(default=120.0, gt=0.0)  # inputs past the bound for this long move it on
    # More than one instance of a service (docs/scaling.md). The recorder, which keeps no state, shares
    # one subscription among its instances: ``share_group`` (an MQTT shared subscription, ``$share/...``).
    # The theatres are split into ``partitions`` partitions (isoperf/partition.py; on a cluster the same
    # number for the topology and every service). A stateful service (leakage, pk, alerts) of several
    # instances gives each its ``partition_share``, "INDEX/COUNT": the partitions p with
    # p % COUNT == INDEX, so a session always stays in one process.
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    partitions: int = Field(default=8, ge=1, le=1024)
    partition_share: str = Field(default="0/1", pattern=r"^[0-9]+/[1-9][0-9]*$")
    theatres_file: Path = Path("deploy/theatres.txt")
    # Without a last will (AMQP): a service repeats its ``online`` status this often and touches its
    # file in ``health_dir`` (what ``isoperf health`` reads); after 3 missed heartbeats the alerts
    # service raises it ``offline``.
    heartbeat_s: float = Field(default=5.0, gt=0.0)
    health_dir: Path = Path(".isoperf/health")
    log_level: str = "INFO"
    # The hospital's time zone (IANA name), for local wall times in reports and listings.
    timezone: str = "UTC"

    def amqp_url_list(self) -> list[str]:
        return [u.strip() for u in self.amqp_urls.split(",") if u.strip()]

    def share_of(self) -> tuple[int, int]:
        """This instance's ``partition_share`` as (index, count)."""
        index, count = (int(x) for x in self.partition_share.split("/"))
        return index, count

    @model_validator(mode="after")
    def _share_in_range(self) -> Self:
        index, count = self.share_of()
        if index >= count:
            raise ValueError(f"ISOPERF_PARTITION_SHARE={self.partition_share}: the index must be below the count")
        return self

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> Self:
        files = {"ISOPERF_MQTT_CA_FILE": self.mqtt_ca_file, "ISOPERF_MQTT_CERT_FILE": self.mqtt_cert_file}
        given = [name for name, value in files.items() if value is not None]
        if given and not self.mqtt_tls:
            raise ValueError(f"{', '.join(given)} given but ISOPERF_MQTT_TLS is not true: refusing plain MQTT")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("ISOPERF_MQTT_CERT_FILE and ISOPERF_MQTT_KEY_FILE go together")
        return self
