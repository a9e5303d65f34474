"""CAN buses for the in-car unit and the simulated ECUs.

`FrameBus` is the port both sides use: send a frame, hear every frame other nodes send.
Two adapters implement it:

* `PythonCanBus`: a python-can bus (`virtual` by default, `socketcan` on a real box or
  `vcan0`), bridged into asyncio with `can.Notifier(..., loop=...)`. Two `virtual` buses on
  the same channel are back to back: what one sends, the other receives.
* `LocalCanNetwork`: one car's bus inside the process, without threads. A fleet of
  thousands of cars cannot afford python-can's reader thread per virtual bus, so each
  simulated car gets a local network whose ports hand each frame to the other nodes'
  listeners at once (listeners must not block; they run on the event loop's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self

import can
import structlog

from device_sim.errors import CanBusError

__all__ = [
    "FrameBus",
    "FrameListener",
    "LocalBusPort",
    "LocalCanNetwork",
    "PythonCanBus",
]

_log = structlog.get_logger(__name__)

FrameListener = Callable[[can.Message], None]


class FrameBus(Protocol):
    """A node's view of a CAN bus."""

    def send(self, frame: can.Message) -> None:
        """Put a frame on the bus (other nodes hear it; the sender does not)."""

    def add_listener(self, listener: FrameListener) -> None:
        """Call `listener` on the event loop for every frame another node sends."""

    def remove_listener(self, listener: FrameListener) -> None:
        """Stop calling `listener`; unknown listeners are ignored."""


class PythonCanBus:
    """A python-can bus as a `FrameBus` (an async context manager; close is idempotent).

    Args:
        interface: python-can interface name: ``virtual`` (default), ``socketcan``, ...
        channel: ``can0``/``vcan0`` for SocketCAN; any name for ``virtual`` (same name = same bus).
        bitrate: only for interfaces that set it (SocketCAN takes it from ``ip link``).
    """

    def __init__(
        self, interface: str = "virtual", channel: str = "tgw0", *, bitrate: int | None = None
    ) -> None:
        self.interface = interface
        self.channel = channel
        self._bitrate = bitrate
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._listeners: list[FrameListener] = []
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._bus is not None or self._closed:
            raise CanBusError("a PythonCanBus is entered once")
        kwargs: dict[str, Any] = {"interface": self.interface, "channel": self.channel}
        if self._bitrate is not None:
            kwargs["bitrate"] = self._bitrate
        if self.interface == "virtual":
            kwargs["receive_own_messages"] = False
        try:
            self._bus = can.Bus(**kwargs)
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            raise CanBusError(
                f"cannot open CAN interface {self.interface} channel {self.channel}: {exc}"
                + (
                    " (is the link up? e.g. `ip link set can0 up type can bitrate 500000`)"
                    if self.interface == "socketcan"
                    else ""
                )
            ) from exc
        # A short timeout lets the reader thread of fd-less buses (virtual) stop quickly.
        self._notifier = can.Notifier(
            self._bus, [self._dispatch], timeout=0.1, loop=asyncio.get_running_loop()
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader and shut the interface down."""
        if self._closed:
            return
        self._closed = True
        notifier, bus = self._notifier, self._bus
        self._notifier = self._bus = None
        if notifier is not None:
            # stop() joins the reader thread: keep that wait off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, notifier.stop, 1.0)
        if bus is not None:
            bus.shutdown()

    def send(self, frame: can.Message) -> None:
        if self._bus is None:
            raise CanBusError("the CAN bus is not open")
        try:
            self._bus.send(frame, timeout=0.1)
        except can.CanError as exc:
            raise CanBusError(f"cannot send frame {frame.arbitration_id:#x}: {exc}") from exc

    def add_listener(self, listener: FrameListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: FrameListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _dispatch(self, frame: can.Message) -> None:
        for listener in tuple(self._listeners):
            listener(frame)


class LocalCanNetwork:
    """One car's CAN bus inside the process: a frame sent on one port reaches the others at once."""

    def __init__(self) -> None:
        self._ports: list[LocalBusPort] = []

    def port(self) -> LocalBusPort:
        """A new node on this bus."""
        port = LocalBusPort(self)
        self._ports.append(port)
        return port

    def deliver(self, sender: LocalBusPort, frame: can.Message) -> None:
        # Synchronous, unlike a real bus: a reply (the body controller's status frame) may
        # arrive while the sender is still in send(); the unit and the ECU models allow that.
        for port in self._ports:
            if port is not sender:
                for listener in port.listeners:
                    listener(frame)


class LocalBusPort:
    """A node's `FrameBus` on a `LocalCanNetwork`."""

    def __init__(self, network: LocalCanNetwork) -> None:
        self._network = network
        self.listeners: list[FrameListener] = []

    def send(self, frame: can.Message) -> None:
        self._network.deliver(self, frame)

    def add_listener(self, listener: FrameListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: FrameListener) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)
