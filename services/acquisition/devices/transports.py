"""Byte transports to theatre equipment, and the framer that cuts their stream into lines.

Every transport has the same four coroutines: ``open``, ``read`` (at least one byte, or
:class:`TransportError` when the device is gone), ``write`` and ``close``. Reasons are worded
for the person at the gateway: "serial port /dev/ttyUSB0 vanished", "tcp 10.0.0.5:4001 refused".

- :class:`SerialTransport`: RS-232 (usually a USB adapter), through ``serialx``.
- :class:`TcpTransport`: a serial-to-Ethernet device server in raw TCP mode.
- :class:`FileTransport`: a log file another program appends to, followed as ``tail -F`` does:
  polled every ``poll_interval_s``; a file that shrinks was truncated (read again from its
  start), a new file (inode) at the path was rotated in (the old one is read to its end first).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from services.acquisition.devices.profile import FileSpec, SerialSpec, TcpSpec

if TYPE_CHECKING:
    import serialx

log = logging.getLogger(__name__)
CHUNK = 4096
_TAIL = 64


class TransportError(Exception):
    """The device cannot be reached, or has gone; ``reason`` says which, for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transport(Protocol):
    """A byte stream to one device."""

    @property
    def label(self) -> str:
        """What it is, for messages: ``serial port /dev/ttyUSB0``, ``tcp 10.0.0.5:4001``."""
        ...

    @property
    def live(self) -> bool:
        """True once bytes arrive as the device sends them (a file read from its start is not live
        until its end is reached): only live lines say anything about the device clock."""
        ...

    @property
    def resets(self) -> int:
        """How often the stream restarted within one connection (truncation, rotation): a partial line
        from before a reset must be dropped."""
        ...

    async def open(self) -> None: ...

    async def read(self, max_bytes: int = CHUNK) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


_PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


_S = TypeVar("_S", SerialSpec, TcpSpec, FileSpec)


class _Stream(Generic[_S]):
    """Defaults for a byte stream: always live, never reset within a connection."""

    def __init__(self, spec: _S) -> None:
        self.spec: _S = spec

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def live(self) -> bool:
        return True

    @property
    def resets(self) -> int:
        return 0


class SerialTransport(_Stream[SerialSpec]):
    def __init__(self, spec: SerialSpec) -> None:
        super().__init__(spec)
        self._serial: serialx.AsyncSerial | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.label} ({self.spec.settings})"

    def _reason(self, e: BaseException, doing: str) -> str:
        port = self.spec.port
        if not os.path.exists(port):
            if doing == "open":
                return f"serial port {port} not found (not plugged in, or another port name?)"
            return f"serial port {port} vanished (USB adapter unplugged?)"
        if isinstance(e, PermissionError):
            return f"serial port {port}: permission denied (is the gateway user in group dialout?)"
        if isinstance(e, TransportError):
            return e.reason
        if isinstance(e, OSError) and e.errno == errno.EBUSY:
            return f"serial port {port} is in use by another program"
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        return f"serial port {port}: {doing} failed: {detail}"

    async def open(self) -> None:
        import serialx

        s = self.spec
        ser = serialx.async_serial_for_url(
            s.port,
            baudrate=s.baudrate,
            byte_size=s.bytesize,
            parity=_PARITY[s.parity],
            stopbits=s.stopbits,
            rtscts=s.rtscts,
            xonxoff=s.xonxoff,
        )
        try:
            await ser.open()
        except Exception as e:  # OSError, serialx.SerialException, ValueError for a setting the port refuses
            raise TransportError(self._reason(e, "open")) from None
        self._serial = ser

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        try:
            data = await self._port().read(max_bytes)
        except Exception as e:  # OSError (EIO when unplugged) or serialx's own
            raise TransportError(self._reason(e, "read")) from None
        if not data:
            raise TransportError(self._reason(EOFError("end of data"), "read"))
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._port().write(data)
        except Exception as e:
            raise TransportError(self._reason(e, "write")) from None

    def _port(self) -> serialx.AsyncSerial:
        if self._serial is None:
            raise TransportError(f"{self.spec.label} is not open")
        return self._serial

    async def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                await asyncio.wait_for(ser.close(), 2.0)
            except Exception as e:  # closing a port that vanished may fail in many ways; it is closed anyway
                log.debug("closing %s: %r", self.spec.label, e)
                ser.abort()


class TcpTransport(_Stream[TcpSpec]):
    def __init__(self, spec: TcpSpec) -> None:
        super().__init__(spec)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        s = self.spec
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), s.connect_timeout_s)
        except ConnectionRefusedError:
            raise TransportError(f"{s.label} refused the connection (device server off, or wrong port?)") from None
        except TimeoutError:
            raise TransportError(
                f"{s.label}: no answer within {s.connect_timeout_s:g} s (unplugged, wrong address?)"
            ) from None
        except socket.gaierror as e:
            raise TransportError(f"{s.label}: cannot resolve {s.host}: {e.strerror}") from None
        except OSError as e:
            raise TransportError(f"{s.label}: {e.strerror or e}") from None
        self._reader, self._writer = reader, writer
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is not None:  # notice a dead device server within about 25 s even when it sends nothing
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        if self._reader is None:
            raise TransportError(f"{self.spec.label} is not open")
        try:
            data = await self._reader.read(max_bytes)
        except OSError as e:
            raise TransportError(f"{self.spec.label}: connection lost: {e.strerror or e}") from None
        if not data:
            raise TransportError(f"{self.spec.label} closed the connection")
        return data

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise TransportError(f"{self.spec.label} is not open")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as e:
            raise TransportError(f"{self.spec.label}: sending failed: {e.strerror or e}") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)


class FileTransport(_Stream[FileSpec]):
    """Follows a file. The position and identity survive ``close``/``open``, so a reconnect goes on
    where it left off; a new file at the path is read from its start."""

    def __init__(self, spec: FileSpec) -> None:
        super().__init__(spec)
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None  # (device, inode) of the file being read
        self._pos = 0
        self._live = False
        self._resets = 0
        self._first = True  # only the first open honours start = "end"
        self._tail = b""  # the last bytes read: a rewrite of the file shows as a change there
        self._mtime = 0
        self._missing_since: float | None = None

    @property
    def live(self) -> bool:
        return self._live

    @property
    def resets(self) -> int:
        return self._resets

    @property
    def _grace_s(self) -> float:
        """How long the path may be missing (between a rotation's rename and create) before it counts as gone."""
        return max(2.0, 10 * self.spec.poll_interval_s)

    def _open_sync(self) -> None:
        path = self.spec.path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise TransportError(f"file {path} not found") from None
        except OSError as e:
            raise TransportError(f"file {path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        same = ident == self._id and st.st_size >= self._pos
        if same and (not self._tail or os.pread(fd, len(self._tail), self._pos - len(self._tail)) == self._tail):
            pos = self._pos  # the same file, not rewritten meanwhile: go on
        elif self._first and self.spec.start == "end":
            pos = st.st_size
        else:
            pos = 0  # a new file (rotated, or back after vanishing), or the same one truncated
        self._first = False
        os.lseek(fd, pos, os.SEEK_SET)
        if pos != self._pos or ident != self._id:
            self._tail = os.pread(fd, min(pos, _TAIL), pos - min(pos, _TAIL))
        self._fd, self._id, self._pos, self._mtime = fd, ident, pos, st.st_mtime_ns
        self._live = pos >= st.st_size
        self._missing_since = None

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _poll_sync(self, max_bytes: int) -> bytes:
        """Read what is there; at the end, look for truncation and rotation. b"" = nothing yet."""
        if self._fd is None:
            raise TransportError(f"{self.spec.label} is not open")
        st = os.fstat(self._fd)
        if st.st_size < self._pos or (st.st_mtime_ns != self._mtime and not self._tail_intact()):
            log.info("file %s was truncated: reading it again from its start", self.spec.path)
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._pos, self._tail, self._resets = 0, b"", self._resets + 1
        self._mtime = st.st_mtime_ns
        data = os.read(self._fd, max_bytes)
        if data:
            self._pos += len(data)
            self._tail = (self._tail + data)[-_TAIL:]
            return data
        self._live = True
        path = self.spec.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            now = time.monotonic()
            self._missing_since = self._missing_since or now
            if now - self._missing_since > self._grace_s:
                self._id = None  # whatever appears at the path next is a new file
                raise TransportError(f"file {path} vanished") from None
            return b""
        self._missing_since = None
        if (st.st_dev, st.st_ino) != self._id:
            log.info("file %s was rotated: reading the new file from its start", path)
            os.close(self._fd)
            self._fd, self._id = None, None
            self._pos, self._resets = 0, self._resets + 1
            self._open_sync()
        return b""

    def _tail_intact(self) -> bool:
        """Are the bytes just before our position those we read? If not, the file was rewritten."""
        assert self._fd is not None
        return not self._tail or os.pread(self._fd, len(self._tail), self._pos - len(self._tail)) == self._tail

    async def read(self, max_bytes: int = CHUNK) -> bytes:
        while True:
            try:
                data = await asyncio.to_thread(self._poll_sync, max_bytes)
            except OSError as e:
                raise TransportError(f"{self.spec.label}: {e.strerror or e}") from None
            if data:
                return data
            await asyncio.sleep(self.spec.poll_interval_s)

    async def write(self, data: bytes) -> None:
        raise TransportError(f"{self.spec.label} is read-only: a log file cannot be polled")

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def make_transport(spec: SerialSpec | TcpSpec | FileSpec) -> Transport:
    """The transport a profile's ``[transport]`` describes (not yet open)."""
    if isinstance(spec, SerialSpec):
        return SerialTransport(spec)
    if isinstance(spec, TcpSpec):
        return TcpTransport(spec)
    return FileTransport(spec)


@dataclass(frozen=True, slots=True)
class Frame:
    """One line without its terminator; ``overlong`` > 0: no terminator within ``max_length`` bytes
    (``raw`` then holds the first ``max_length`` bytes, the rest of the run is discarded)."""

    raw: bytes
    overlong: int = 0


class Framer:
    """Cuts a byte stream into lines at ``terminator``; a run longer than ``max_length`` is garbage
    up to the next terminator. Stray CR/LF at either end of a line are dropped, so a CR LF device
    behind a CR profile (or the reverse) still frames."""

    def __init__(self, terminator: bytes, max_length: int) -> None:
        if not terminator or max_length < 1:
            raise ValueError("terminator must be non-empty and max_length positive")
        self.terminator, self.max_length = terminator, max_length
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        term, keep = self.terminator, len(self.terminator) - 1
        while True:
            i = self._buf.find(term)
            if self._discarding:
                if i < 0:
                    del self._buf[: len(self._buf) - keep]  # keep a possible partial terminator
                    return frames
                del self._buf[: i + len(term)]
                self._discarding = False
                continue
            if i < 0:
                if len(self._buf) > self.max_length + keep:
                    frames.append(Frame(bytes(self._buf[: self.max_length]), overlong=len(self._buf)))
                    self._discarding = True
                    continue
                return frames
            line = bytes(self._buf[:i])
            del self._buf[: i + len(term)]
            if len(line) > self.max_length:
                frames.append(Frame(line[: self.max_length], overlong=len(line)))
            else:
                frames.append(Frame(line.strip(b"\r\n")))

    def reset(self) -> int:
        """Drop a partial line (after a reconnect); returns how many bytes were dropped."""
        n = len(self._buf)
        self._buf.clear()
        self._discarding = False
        return n
