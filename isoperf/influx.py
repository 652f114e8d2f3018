"""InfluxDB 1.x HTTP API over aiohttp: ``/write`` with line protocol, ``/query`` with InfluxQL.

This dialect is served natively by InfluxDB 1.x and, for compatibility, by 2.x
(with a DBRP mapping) and 3.x, so the same client works against all three.
Line protocol is written here (:func:`line`, :func:`series_key`): ``influxdb_client``'s ``Point``
serializer, which it matches character for character (tests/unit/test_line_protocol.py holds it as
the oracle), costs about 30 us a point, a third of a core at 10,000 readings/s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, Self

import aiohttp
from yarl import URL

from isoperf.backoff import Backoff
from isoperf.settings import ServiceSettings
from isoperf.tls import client_context

log = logging.getLogger(__name__)

FieldValue = float | int | bool | str | None
Row = dict[str, Any]


class LineSink(Protocol):
    """Where points go: ``add`` buffers lines, ``flush`` returns once they are stored."""

    def add(self, lines: Iterable[str]) -> None: ...

    async def flush(self) -> None: ...


class RowReader(Protocol):
    """What reads stored points back: InfluxQL in, rows out (time in epoch ms, tags merged in)."""

    async def rows(self, q: str) -> list[Row]: ...


def rows_of(series: list[dict[str, Any]]) -> list[Row]:
    """Every row of every series of an InfluxQL result as a dict, the series' tags merged in."""
    out: list[Row] = []
    for s in series:
        tags = s.get("tags") or {}
        for values in s["values"]:
            row = dict(zip(s["columns"], values, strict=True))
            row.update(tags)
            out.append(row)
    return out


_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


def _key(name: str) -> str:
    return name.translate(_ESCAPE_KEY)


def _tag_value(value: str) -> str:
    escaped = value.translate(_ESCAPE_KEY)
    return escaped + " " if escaped.endswith("\\") else escaped


def number(x: float) -> str:
    """A float field value: ``50`` for 50.0 (line protocol reads an unsuffixed number as a float)."""
    s = repr(x)
    return s[:-2] if s.endswith(".0") else s


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,tag=value,...`` (tags sorted, empty ones left out): the start of a line, the
    same for every point of a series, so a batch formats it once."""
    parts = [measurement.translate(_ESCAPE_MEASUREMENT)]
    for k, v in sorted(tags.items()):
        key, value = _key(k), _tag_value(v)
        if key and value:
            parts.append(f"{key}={value}")
    return ",".join(parts)


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], t: float) -> str:
    """One point in line protocol, stamped with event time ``t`` (Unix seconds) at ms precision.

    Numbers are always written as floats, so a field never changes type between
    points (InfluxDB rejects that); ``None`` and non-finite numbers are left out.
    """
    out = []
    for k, fv in sorted(fields.items()):
        if fv is None:
            continue
        if isinstance(fv, bool):
            out.append(f"{_key(k)}={'true' if fv else 'false'}")
        elif isinstance(fv, str):
            out.append(f'{_key(k)}="{fv.translate(_ESCAPE_STRING)}"')
        else:
            x = float(fv)
            if not math.isfinite(x):
                continue
            out.append(f"{_key(k)}={number(x)}")
    if not out:
        raise ValueError(f"point {measurement} at {t} has no field")
    return f"{series_key(measurement, tags)} {','.join(out)} {round(t * 1000)}"


def public_url(url: str) -> str:
    """``url`` without the user and password it may hold: what may be shown or logged."""
    return str(URL(url).with_user(None).with_password(None))


class InfluxError(RuntimeError):
    """InfluxDB refused a request for a reason retrying will not fix."""


class InfluxClient:
    """A small async client for the 1.x HTTP API, with retry on transient failures."""

    def __init__(self, settings: ServiceSettings, session: aiohttp.ClientSession | None = None) -> None:
        url = URL(settings.influx_url.rstrip("/"))
        username = settings.influx_username
        password = settings.influx_password.get_secret_value() if settings.influx_password else ""
        if url.user is not None:  # credentials written into the URL: moved to the header, never sent or shown in it
            username = username or url.user
            password = password or (url.password or "")
            url = URL(public_url(str(url)))
        self._url = str(url)
        self.database = settings.influx_database
        # Credentials travel in the Authorization header, never in the query string: a URL is
        # logged by proxies and appears in error messages. InfluxDB 1.x takes Basic auth (1.6
        # does not understand "Token user:password"); 2.x/3.x a token.
        self._headers: dict[str, str] = {}
        if settings.influx_token is not None:
            self._headers["Authorization"] = f"Token {settings.influx_token.get_secret_value()}"
        elif username:
            self._headers["Authorization"] = aiohttp.BasicAuth(username, password).encode()
        self._ssl: ssl.SSLContext | bool = True
        if url.scheme == "https":
            self._ssl = client_context(settings.influx_ca_file)
        self._session = session
        self._own_session = session is None

    @property
    def url(self) -> str:
        """The server's base URL, without credentials: safe to log."""
        return self._url

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("InfluxClient used outside 'async with'")
        return self._session

    async def ping(self) -> bool:
        try:
            async with self.session.get(f"{self._url}/ping", headers=self._headers, ssl=self._ssl) as resp:
                return resp.status == 204
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def query(self, q: str, *, database: str | None = None, method: str = "GET") -> list[dict[str, Any]]:
        """Run InfluxQL; return the first statement's series (dicts of ``name``, ``tags``, ``columns``, ``values``).

        Times come back as epoch milliseconds.
        """
        params = {"q": q, "epoch": "ms"}
        db = database if database is not None else self.database
        if db:
            params["db"] = db
        async with self.session.request(
            method, f"{self._url}/query", params=params, headers=self._headers, ssl=self._ssl
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise InfluxError(f"query failed ({resp.status}): {body}")
        results = body.get("results", [])
        if not results:
            return []
        first = results[0]
        if "error" in first:
            raise InfluxError(f"query failed: {first['error']}")
        series: list[dict[str, Any]] = first.get("series", [])
        return series

    async def rows(self, q: str) -> list[Row]:
        """Run InfluxQL and return every row of every series as a dict (tags merged in)."""
        return rows_of(await self.query(q))

    async def create_database(self) -> None:
        await self.query(f'CREATE DATABASE "{self.database}"', database="", method="POST")

    async def write_lines(self, lines: list[str]) -> None:
        """POST lines once; raise ``InfluxError`` on a permanent refusal, aiohttp errors on transient ones."""
        if not lines:
            return
        params = {"db": self.database, "precision": "ms"}
        data = "\n".join(lines).encode()
        async with self.session.post(
            f"{self._url}/write", params=params, data=data, headers=self._headers, ssl=self._ssl
        ) as resp:
            if resp.status == 204:
                return
            text = await resp.text()
            # Only a refusal of the lines themselves (400: bad points, a partial write; 413: too large)
            # is final. A missing database (404), rotated credentials (401, 403) or an overloaded server
            # are retried: the input stays unacknowledged until it is stored.
            if resp.status not in (400, 413):
                if resp.status in (401, 403, 404):
                    log.error("InfluxDB write refused (%d): %s; retrying until it is fixed", resp.status, text[:200])
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=text[:500]
                )
            raise InfluxError(f"write refused ({resp.status}): {text[:500]}")


class InfluxWriter:
    """Buffers lines and writes them in batches; retries transient failures with backoff.

    ``flush`` returns only once everything buffered is stored (or permanently
    refused, which is logged): callers acknowledge their input after it.
    """

    def __init__(self, client: InfluxClient, batch_size: int = 5000, max_backoff_s: float = 30.0) -> None:
        self._client = client
        self._buffer: list[str] = []
        self._lock = asyncio.Lock()
        self._batch_size = batch_size
        self._max_backoff_s = max_backoff_s
        self.written = 0
        self.refused = 0

    def add(self, lines: Iterable[str]) -> None:
        self._buffer.extend(lines)

    def __len__(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Store the lines added before this call (lines added meanwhile wait for the next flush)."""
        async with self._lock:
            left = len(self._buffer)
            while left:
                batch = self._buffer[: min(left, self._batch_size)]
                await self._write_with_retry(batch)
                del self._buffer[: len(batch)]
                left -= len(batch)

    async def _write_with_retry(self, batch: list[str]) -> None:
        backoff = Backoff(0.2, self._max_backoff_s)
        while True:
            try:
                await self._client.write_lines(batch)
                self.written += len(batch)
                return
            except InfluxError as exc:
                # A partial write stores the good points and refuses the rest;
                # retrying cannot help, and must not block the lines behind.
                self.refused += len(batch)
                log.error("InfluxDB refused a batch of %d lines: %s", len(batch), exc)
                return
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("InfluxDB write failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
