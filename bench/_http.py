"""A lean HTTP/1.1 client for benchmarks: keep-alive requests and a server-sent events reader.

The load a benchmark puts on the gateway's API must cost the benchmark little CPU on a
2-core machine, so this speaks just enough HTTP/1.1 on asyncio streams (no per-request
objects beyond bytes): requests on a pool of keep-alive connections, bodies by Content-Length
or chunked, and one long-lived `text/event-stream` response read chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpClient", "HttpError", "Response", "sse_events"]

_HEAD_END = b"\r\n\r\n"
_READ_LIMIT = 1 << 20
# uvicorn closes a keep-alive connection after 5 s idle; one idle this long is not reused (a
# request written just as the server closes it would fail without having been processed).
_MAX_IDLE_S = 3.0


class HttpError(Exception):
    """The server broke the protocol or closed the connection."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(_HEAD_END)
    except asyncio.IncompleteReadError as exc:
        raise HttpError("the server closed the connection") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.1 status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body (b"" for the last one)."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0], 16)
    data = await reader.readexactly(size + 2)  # the chunk and its CRLF
    return data[:-2]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while chunk := await _read_chunk(reader):
            parts.append(chunk)
        await reader.readuntil(b"\r\n")  # no trailers from our server: the final CRLF
        return b"".join(parts)
    return b""


def _request(method: str, path: str, host: str, token: str, body: bytes | None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {token}",
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class HttpClient:
    """Requests to one server over up to `connections` keep-alive connections.

    Use as `async with HttpClient(...) as client`; `await client.request("POST", path, body)`.
    """

    def __init__(self, host: str, port: int, token: str, connections: int = 8) -> None:
        self._host = host
        self._port = port
        self._authority = f"{host}:{port}"
        self._token = token
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(connections)
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (idempotent)."""
        writers, self._open = self._open, set()
        self._idle.clear()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send one request and read its whole response."""
        async with self._slots:
            reader, writer = await self._connection()
            try:
                writer.write(_request(method, path, self._authority, self._token, body))
                status, headers = await _read_head(reader)
                data = await _read_body(reader, headers)
            except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                self._open.discard(writer)
                writer.close()
                raise HttpError(f"{method} {path}: {exc}") from exc
            if headers.get("connection", "").lower() == "close":
                self._open.discard(writer)
                writer.close()
            else:
                self._idle.append((reader, writer, time.monotonic()))
            return Response(status, headers, data)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < _MAX_IDLE_S and not reader.at_eof():
                return reader, writer
            self._open.discard(writer)
            writer.close()
        reader, writer = await asyncio.open_connection(self._host, self._port, limit=_READ_LIMIT)
        self._open.add(writer)
        return reader, writer


async def sse_events(
    host: str, port: int, path: str, token: str, *, connected: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, bytes]]:
    """(event name, data) of every event of a server-sent events stream, until it ends.

    Sets `connected` once the response headers arrived (the server is then subscribed).
    """
    reader, writer = await asyncio.open_connection(host, port, limit=_READ_LIMIT)
    try:
        writer.write(_request("GET", path, f"{host}:{port}", token, None))
        status, headers = await _read_head(reader)
        if status != 200:
            body = await _read_body(reader, headers)
            raise HttpError(f"GET {path}: {status} {body[:300]!r}")
        if connected is not None:
            connected.set()
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        buffer = b""
        while True:
            data = await _read_chunk(reader) if chunked else await reader.read(65536)
            if not data:
                return
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for raw in events:
                name, payload = "message", b""
                for line in raw.split(b"\n"):
                    if line.startswith(b"data:"):
                        payload = line[5:].strip()
                    elif line.startswith(b"event:"):
                        name = line[6:].strip().decode()
                if payload:
                    yield name, payload
    finally:
        writer.close()
