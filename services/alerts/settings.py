"""Settings of the alerts service: the shared ones plus ``ISOPERF_ALERTS_*`` (rules, channels, state)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from pydantic import BaseModel, Field, SecretStr

from isoperf.settings import ServiceSettings
from services.alerts.channels import Channel, EmailChannel, SmtpConfig, WebhookChannel, WebhookFormat


class WebhookTarget(BaseModel):
    url: str
    format: WebhookFormat = "generic"


class AlertsSettings(ServiceSettings):
    alerts_state_file: Path = Path(".isoperf/alerts-state.json")
    # How long (s, the service's clock) a reading or event may wait for a stream that is behind
    # (the leakage derived from it) before it is applied anyway: see services/alerts/README.md.
    alerts_hold_s: float = Field(default=30.0, ge=0.0)
    alerts_rules_file: Path | None = None  # TOML: name = value, the names of AlertRules
    alerts_webhooks: list[WebhookTarget] = Field(default_factory=list)  # JSON: [{"url": "...", "format": "slack"}]
    # Where an unacknowledged critical alert goes as well (the on-call phone, a second team).
    alerts_escalation_webhooks: list[WebhookTarget] = Field(default_factory=list)
    alerts_escalation_smtp_to: list[str] = Field(default_factory=list)
    alerts_smtp_host: str | None = None
    alerts_smtp_port: int = 25
    alerts_smtp_username: str | None = None
    alerts_smtp_password: SecretStr | None = None
    alerts_smtp_starttls: bool = False
    alerts_smtp_from: str = "isoperf@localhost"
    alerts_smtp_to: list[str] = Field(default_factory=list)  # JSON: ["perfusion-team@hospital.example"]

    def channels(self, session: aiohttp.ClientSession, *, escalation: bool = False) -> list[Channel]:
        hooks = self.alerts_escalation_webhooks if escalation else self.alerts_webhooks
        to = self.alerts_escalation_smtp_to if escalation else self.alerts_smtp_to
        out: list[Channel] = [WebhookChannel(w.url, w.format, session) for w in hooks]
        if self.alerts_smtp_host and to:
            password = self.alerts_smtp_password.get_secret_value() if self.alerts_smtp_password else None
            out.append(
                EmailChannel(
                    SmtpConfig(
                        self.alerts_smtp_host,
                        self.alerts_smtp_port,
                        self.alerts_smtp_from,
                        tuple(to),
                        self.alerts_smtp_username,
                        password,
                        self.alerts_smtp_starttls,
                    )
                )
            )
        return out
