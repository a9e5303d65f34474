"""uvicorn embedded in the gateway's own event loop and TaskGroup."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

__all__ = ["EmbeddedHttpServer"]


class _NoSignalServer(uvicorn.Server):
    # The gateway's composition root owns SIGTERM/SIGINT; uvicorn must not replace them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedHttpServer:
    """Serves an ASGI app until `stop()`."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        self._server = _NoSignalServer(config)

    async def serve(self) -> None:
        await self._server.serve()

    def stop(self) -> None:
        self._server.should_exit = True

    @property
    def bound_port(self) -> int | None:
        """The port actually bound (useful with port 0), once started."""
        for server in self._server.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        return None
