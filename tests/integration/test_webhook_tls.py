"""Webhooks verify the receiver's certificate: an HTTPS receiver whose certificate no trusted CA
signed is refused, the same receiver is reached once its CA is trusted."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from isoperf.schemas import Alert
from isoperf.tls import client_context
from isoperf.tools.devcerts import issue, make_ca
from isoperf.tools.stack import free_port
from services.alerts.channels import Notice, WebhookChannel

pytestmark = pytest.mark.integration


async def test_a_webhook_receiver_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert = issue(ca, tmp_path / "hook", "localhost", server_names=("127.0.0.1",))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(cert.cert), str(cert.key))
    received: list[object] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    alert = Alert(
        t=1_767_225_600.0, id="a-1", rule="leakage", severity="warning", status="firing",
        value=2.5, threshold=2.0, message="Leakage 2.5 %",
    )  # fmt: skip
    notice = Notice("theatre-1", "s-1", alert)
    url = f"https://127.0.0.1:{port}/hook?token=not-shown"
    try:
        async with aiohttp.ClientSession() as session:  # as the alerts service builds it: default verification
            channel = WebhookChannel(url, "generic", session)
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await channel.send(notice)
            assert "token" not in channel.name
        assert received == []
        trusting = aiohttp.TCPConnector(ssl=client_context(ca.cert))
        async with aiohttp.ClientSession(connector=trusting) as session:
            await WebhookChannel(url, "generic", session).send(notice)
        assert len(received) == 1
    finally:
        await runner.cleanup()
