"""uvicorn embedded in the gateway's own event loop and TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from gateway.errors import ConfigurationError

__all__ = ["EmbeddedHttpServer"]

_START_POLL_S = 0.01


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
        self._where = f"{host}:{port}"

    async def serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind; here that is a settings problem.
            raise ConfigurationError(
                f"cannot listen for HTTP on {self._where} (in use?): "
                "set TGW_HTTP__HOST / TGW_HTTP__PORT"
            ) from exc

    async def wait_started(self, serving: asyncio.Task[None], timeout_s: float = 30.0) -> None:
        """Return once the socket is bound and accepting; raise if `serving` ended first."""
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if serving.done():
                    serving.result()  # raises why it stopped
                    raise ConfigurationError(f"the HTTP server on {self._where} stopped at start")
                await asyncio.sleep(_START_POLL_S)

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
