"""Car results: validate, link to their command, apply, and acknowledge after the commit.

Results arrive on the gateway's shared subscription to `tgw/v1/vehicles/+/command_results`
(the same MQTT connection as ingest). Each car's results go to one worker, in order; the
broker's acknowledgement is released only once the result is committed, so a gateway that dies
meanwhile gets it redelivered (applying a result twice changes nothing).
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandEvent
from gateway.commands.store import CommandStore
from gateway.ingest.inbound import InboundMessage
from schemas import (
    Accepted,
    CommandResultMessage,
    InboundLimits,
    RejectionReason,
    decode_uplink,
    ms_to_datetime,
)

__all__ = ["ResultAcknowledger", "ResultIntake"]

log = structlog.get_logger(__name__)

_RETRY_INITIAL_S = 0.5
_RETRY_MAX_S = 15.0
# Results applied in one transaction at most (they queue up only when the database is behind).
_BATCH_MAX = 64


class ResultAcknowledger(Protocol):
    """Releases the broker's QoS 1 acknowledgement (the ingest source does it)."""

    def ack(self, messages: Sequence[InboundMessage]) -> int: ...


def _ignore(_event: CommandEvent) -> None:
    pass


class ResultIntake:
    """Takes routed result messages (`route`) and applies them in `workers` named tasks."""

    def __init__(
        self,
        store: CommandStore,
        metrics: CommandMetrics,
        *,
        workers: int,
        limits: InboundLimits,
        dead_letter_payload_bytes: int,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._limits = limits
        self._dead_letter_payload_bytes = dead_letter_payload_bytes
        self._queues: list[asyncio.Queue[InboundMessage]] = [
            asyncio.Queue() for _ in range(workers)
        ]
        # Set by the runtime: the state change a result made (a car may be free for the next).
        self.on_event: Callable[[CommandEvent], None] = _ignore

    @property
    def workers(self) -> int:
        return len(self._queues)

    def route(self, message: InboundMessage) -> None:
        """Called on the event loop for every result message; never blocks."""
        # One car, one worker: its accepted is applied before its executed.
        shard = zlib.crc32(message.topic.encode()) % len(self._queues)
        self._queues[shard].put_nowait(message)

    async def run_worker(self, index: int, acknowledger: ResultAcknowledger) -> None:
        """Apply results from queue `index` until cancelled: everything waiting at once (one
        transaction for many results when they queue up), acknowledged after the commit."""
        queue = self._queues[index]
        while True:
            batch = [await queue.get()]
            while len(batch) < _BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            await self._with_retry(batch)
            acknowledger.ack(batch)

    async def _with_retry(self, batch: list[InboundMessage]) -> None:
        delay = _RETRY_INITIAL_S
        while True:
            try:
                await self.handle_batch(batch)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # Nothing of the batch was committed, or it was and applying again changes
                # nothing (results are idempotent): the whole batch again.
                log.warning("commands.result_retry", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter
                delay = min(delay * 2, _RETRY_MAX_S)
            else:
                return

    async def handle(self, message: InboundMessage) -> None:
        """Validate and apply one result (or keep it as a dead letter)."""
        await self.handle_batch([message])

    async def handle_batch(self, messages: Sequence[InboundMessage]) -> None:
        """Validate and apply results, in order (or keep them as dead letters)."""
        valid: list[tuple[InboundMessage, CommandResultMessage]] = []
        for message in messages:
            outcome = decode_uplink(
                message.topic,
                message.payload,
                received_at_ms=message.received_at_ms,
                limits=self._limits,
            )
            if not isinstance(outcome, Accepted):
                await self._dead_letter(message, outcome.reason.value, outcome.detail, outcome.vin)
            elif not isinstance(outcome.message, CommandResultMessage):
                await self._dead_letter(  # the topic kind says it is one: never seen
                    message,
                    RejectionReason.UNKNOWN_TOPIC.value,
                    "not a command result",
                    outcome.topic.vin,
                )
            else:
                valid.append((message, outcome.message))
        if not valid:
            return
        self._metrics.batch_size.labels("results").observe(len(valid))
        applied_all = await self._store.apply_results([result for _, result in valid])
        for (message, result), applied in zip(valid, applied_all, strict=True):
            if applied.dead_letter_reason is not None:
                await self._dead_letter(
                    message,
                    applied.dead_letter_reason,
                    applied.dead_letter_detail or "",
                    result.vin,
                )
                continue
            assert applied.effect is not None
            if applied.event is not None:
                self.on_event(applied.event)
            self._metrics.results.labels(applied.effect.value).inc()
            log.info(
                "commands.result",
                command_id=str(result.command_id),
                vin=result.vin,
                outcome=result.outcome.value,
                reason=result.reason.value if result.reason else None,
                effect=applied.effect.value,
            )

    async def _dead_letter(
        self, message: InboundMessage, reason: str, detail: str, vin: str | None
    ) -> None:
        self._metrics.dead_letters.labels(reason).inc()
        self._metrics.results.labels("dead_letter").inc()
        log.warning(
            "commands.result_dead_letter", topic=message.topic, reason=reason, detail=detail
        )
        await self._store.dead_letter(
            received_at=ms_to_datetime(message.received_at_ms),
            topic=message.topic,
            vin=vin,
            reason=reason,
            detail=detail,
            payload=message.payload,
            max_payload_bytes=self._dead_letter_payload_bytes,
        )
