"""``isoperf boards install`` through grafana-client, against a local HTTP stand-in for Grafana's
API (Grafana itself cannot run here): the requests it makes, and what they carry."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from isoperf.tools import boards
from isoperf.tools.stack import free_port


@pytest.fixture
def grafana() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    seen: list[tuple[str, str, Any]] = []
    existing: set[str] = set()

    class Api(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n)) if n else None

        def do_GET(self) -> None:
            seen.append(("GET", self.path, self.headers.get("Authorization")))
            if self.path in existing:
                self._reply(200, {"uid": self.path.rsplit("/", 1)[-1]})
            else:
                self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            seen.append(("POST", self.path, body))
            if self.path == "/api/datasources":
                existing.add(f"/api/datasources/uid/{body['uid']}")
            if self.path == "/api/folders":
                existing.add(f"/api/folders/{body['uid']}")
            self._reply(200, {"status": "success", "uid": (body or {}).get("uid", "x")})

        def do_PUT(self) -> None:
            seen.append(("PUT", self.path, self._body()))
            self._reply(200, {"message": "updated"})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://admin:secret@127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_install_creates_then_updates_the_data_source_folder_and_boards(
    grafana: tuple[str, list[tuple[str, str, Any]]],
) -> None:
    url, seen = grafana
    ds = boards.datasource("http://influxdb:8086", "perfusion", "grafana", "read-pw")
    assert boards.install(url, None, ds) == ["isoperf-theatre-live", "isoperf-session-review", "isoperf-overview"]
    posts = [(path, body) for method, path, body in seen if method == "POST"]
    assert posts[0] == ("/api/datasources", ds) and ds["secureJsonData"] == {"password": "read-pw"}
    assert posts[1][0] == "/api/folders" and posts[1][1]["uid"] == "isoperf"
    dashboards = [body for path, body in posts if path == "/api/dashboards/db"]
    assert [d["dashboard"]["uid"] for d in dashboards] == [
        "isoperf-theatre-live",
        "isoperf-session-review",
        "isoperf-overview",
    ]
    assert all(d["folderUid"] == "isoperf" and d["overwrite"] is True for d in dashboards)
    assert seen[0][2] is not None and seen[0][2].startswith("Basic "), "credentials from the URL"
    # A second install updates the data source in place instead of creating another.
    seen.clear()
    boards.install(url, None, ds)
    assert ("PUT", "/api/datasources/uid/isoperf-influxdb", ds) in seen
    assert not any(m == "POST" and p in ("/api/datasources", "/api/folders") for m, p, _ in seen)
