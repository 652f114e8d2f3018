"""Alert channels with a real local SMTP server and real HTTP receivers, one of them hanging."""

from __future__ import annotations

import email
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from isoperf.tools.stack import LocalStack, find_binary, free_port
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import mosquitto_pub, rows
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[float, email.message.Message]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802  (aiosmtpd's hook name)
        self.messages.append((time.monotonic(), email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


Received = list[tuple[float, str, dict[str, Any]]]  # (arrival time, path, JSON body) of each POST


@pytest.fixture
def receiver() -> Iterator[tuple[Received, int]]:
    got: Received = []
    release = threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/hang":
                release.wait(20)  # a webhook that never answers in time (until the test is over)
            got.append((time.monotonic(), self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield got, server.server_address[1]
    release.set()
    server.shutdown()
    server.server_close()  # joins the request threads, closing their sockets


def publish(stack: LocalStack, topic: str, data: dict[str, Any]) -> None:
    mosquitto_pub(stack, topic, json.dumps(data).encode())


def test_email_and_webhooks_for_firing_repeat_escalation_resolve(
    stack: ControlledStack,
    services: Callable[..., ServiceProcess],
    ids: tuple[str, str],
    mailbox: tuple[Mailbox, int],
    receiver: tuple[Received, int],
    tmp_path: Path,
) -> None:
    theatre, session = ids
    box, smtp_port = mailbox
    hooks, http_port = receiver
    base = f"http://127.0.0.1:{http_port}"
    webhooks = [
        {"url": f"{base}/hang"},
        {"url": f"{base}/generic"},
        {"url": f"{base}/slack", "format": "slack"},
        {"url": f"{base}/teams", "format": "teams"},
    ]
    services(
        "alerts",
        ISOPERF_ALERTS_STATE_FILE=str(tmp_path / "state.json"),
        ISOPERF_ALERTS_WEBHOOKS=json.dumps(webhooks),
        ISOPERF_ALERTS_SMTP_HOST="127.0.0.1",
        ISOPERF_ALERTS_SMTP_PORT=str(smtp_port),
        ISOPERF_ALERTS_SMTP_TO='["perfusion-team@hospital.example"]',
    )
    root = f"perfusion/{theatre}/{session}"
    t0 = 1_767_225_600.0
    publish(
        stack,
        f"{root}/meta",
        {
            "t": t0,
            "procedure": "IHHP",
            "isotope": "Tc-99m",
            "weight_kg": 70,
            "circuit_volume_ml": 220,
            "melphalan_mg_per_kg": 1.0,
            "thresholds": {"repeat_s": 60},
        },
    )
    watcher = subprocess.Popen(
        [
            find_binary("mosquitto_sub"),
            "-h",
            stack.host,
            "-p",
            str(stack.mqtt_port),
            "-t",
            f"{root}/alert",
            "-C",
            "1",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
    )
    time.sleep(0.5)

    def leak(dt: float, pct: float) -> dict[str, Any]:
        return {"t": t0 + dt, "state": "monitoring", "percent": pct, "ci_low": pct - 0.3, "ci_high": pct + 0.3}

    published = time.monotonic()
    publish(stack, f"{root}/leakage", leak(0, 1.5))  # advisory
    first_alert = watcher.communicate(timeout=30)[0]
    mqtt_latency = time.monotonic() - published
    for dt, pct in ((61, 1.5), (62, 2.6), (63, 0.5)):  # reminder, warning, resolved
        publish(stack, f"{root}/leakage", leak(dt, pct))

    wait_for(lambda: len(box.messages) == 4, timeout=30)
    subjects = [m["Subject"] for _, m in box.messages]
    assert [s.split("]")[0] for s in subjects] == [
        "[isoperf ADVISORY",
        "[isoperf ADVISORY reminder",
        "[isoperf WARNING",
        "[isoperf RESOLVED",
    ]
    assert "above the advisory level of 1 %" in box.messages[0][1].get_payload()

    wait_for(lambda: sum(1 for _, path, _ in hooks if path == "/teams") == 4, timeout=30)
    generic = [b for _, path, b in hooks if path == "/generic"]
    assert [b["kind"] for b in generic] == ["new", "repeat", "escalated", "resolved"]
    assert generic[0]["theatre"] == theatre and generic[0]["severity"] == "advisory"
    assert all("text" in b and b["text"].startswith("*[isoperf") for _, path, b in hooks if path == "/slack")
    teams = [b for _, path, b in hooks if path == "/teams"]
    # Teams Workflows: a message with one Adaptive Card (the MessageCard connectors are retired).
    cards = [b["attachments"][0] for b in teams]
    assert all(b["type"] == "message" and len(b["attachments"]) == 1 for b in teams)
    assert {c["contentType"] for c in cards} == {"application/vnd.microsoft.card.adaptive"}
    assert [c["content"]["body"][0]["color"] for c in cards] == ["Accent", "Accent", "Warning", "Good"]
    assert cards[0]["content"]["type"] == "AdaptiveCard" and cards[0]["content"]["body"][0]["text"] == subjects[0]
    facts = {f["title"]: f["value"] for f in cards[0]["content"]["body"][2]["facts"]}
    assert facts["Theatre"] == theatre and facts["Severity"] == "advisory"

    # Every delivery is kept in the record, per channel (named without its URL, which holds a
    # secret); the hanging webhook has delivered nothing.
    w = f"theatre='{theatre}' AND session='{session}'"

    def deliveries() -> list[dict[str, Any]]:
        got = rows(stack, f"SELECT * FROM alert_delivery WHERE {w}")
        return got if len(got) == 16 else []

    kept = wait_for(deliveries, timeout=30)
    by_channel: dict[str, list[str]] = {}
    for r in kept:
        assert r["outcome"] == "delivered" and r["attempts"] >= 1 and "127.0.0.1:" not in r["channel"]
        by_channel.setdefault(r["channel"].split("#")[0], []).append(r["kind"])
    assert sorted(by_channel) == ["email:127.0.0.1", "webhook:generic", "webhook:slack", "webhook:teams"]
    assert all(kinds == ["new", "repeat", "escalated", "resolved"] for kinds in by_channel.values()), by_channel

    # The hanging webhook held up neither the MQTT alert nor the e-mail.
    assert b'"severity": "advisory"' in first_alert or b"advisory" in first_alert
    assert mqtt_latency < 2.0
    assert box.messages[0][0] - published < 5.0
    assert not any(path == "/hang" for _, path, _ in hooks)


def test_an_unacknowledged_critical_alert_goes_to_the_escalation_channel(
    stack: ControlledStack,
    services: Callable[..., ServiceProcess],
    ids: tuple[str, str],
    receiver: tuple[Received, int],
    tmp_path: Path,
) -> None:
    theatre, session = ids
    hooks, http_port = receiver
    base = f"http://127.0.0.1:{http_port}"
    services(
        "alerts",
        ISOPERF_ALERTS_STATE_FILE=str(tmp_path / "state.json"),
        ISOPERF_ALERTS_WEBHOOKS=json.dumps([{"url": f"{base}/team"}]),
        ISOPERF_ALERTS_ESCALATION_WEBHOOKS=json.dumps([{"url": f"{base}/oncall"}]),
    )
    root, t0 = f"perfusion/{theatre}/{session}", time.time()
    meta = {"t": t0, "procedure": "IHP", "isotope": "Tc-99m", "weight_kg": 70, "circuit_volume_ml": 220}
    meta |= {"melphalan_mg_per_kg": 1.0, "thresholds": {"escalate_after_s": 3.0}}
    publish(stack, f"{root}/meta", meta)
    publish(stack, f"{root}/leakage", {"t": t0, "state": "monitoring", "percent": 6.0, "ci_low": 5.6, "ci_high": 6.4})
    # No acknowledgement and no further input: the service's clock escalates after 3 s.
    oncall = wait_for(lambda: [b for _, path, b in hooks if path == "/oncall"], timeout=20)
    assert [(b["kind"], b["severity"]) for b in oncall] == [("unacknowledged", "critical")]
    publish(
        stack, f"{root}/leakage", {"t": t0 + 10, "state": "monitoring", "percent": 0.2, "ci_low": 0, "ci_high": 0.5}
    )
    wait_for(lambda: [b["kind"] for _, path, b in hooks if path == "/oncall"] == ["unacknowledged", "resolved"])
    team = [b["kind"] for _, path, b in hooks if path == "/team"]
    assert team == ["new", "unacknowledged", "resolved"]
