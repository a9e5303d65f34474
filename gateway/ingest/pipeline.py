"""The ingest loop: receive -> validate -> batch -> write -> acknowledge.

Acknowledgements are released only after the batch holding a message has
committed. While the database is down the loop retries the same batch with
backoff and takes nothing new, so the broker's receive maximum holds the rest.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import structlog

from gateway.config import IngestSettings
from gateway.ingest.batch import IngestBatch
from gateway.ingest.inbound import InboundMessage
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.writer import BatchRefusedError, StorageUnavailableError, WriteResult
from schemas import Accepted, InboundLimits, Rejected, RejectionReason, decode_uplink

__all__ = ["BatchSink", "IngestPipeline", "MessageSource"]

log = structlog.get_logger(__name__)

_A = TypeVar("_A")
_T = TypeVar("_T")

Classified = tuple[InboundMessage, Accepted | Rejected]


class MessageSource(Protocol):
    """Where messages come from and where their acknowledgements go."""

    async def receive(self, max_messages: int, max_delay_s: float) -> list[InboundMessage]: ...

    def take_ready(self, max_messages: int) -> list[InboundMessage]: ...

    def ack(self, messages: Sequence[InboundMessage]) -> int: ...

    @property
    def pending(self) -> int: ...


class BatchSink(Protocol):
    """Where batches are committed."""

    async def write(self, batch: IngestBatch) -> WriteResult: ...

    async def registered(self, vins: list[str]) -> set[str]: ...


class IngestPipeline:
    """Runs until `stop()`, then commits what it already received and returns."""

    def __init__(
        self,
        source: MessageSource,
        sink: BatchSink,
        settings: IngestSettings,
        metrics: IngestMetrics,
    ) -> None:
        self._source = source
        self._sink = sink
        self._settings = settings
        self._metrics = metrics
        self._limits = InboundLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew_ms=settings.max_future_skew_ms,
            max_past_age_ms=settings.max_past_age_ms,
        )
        self._stopping = asyncio.Event()
        self._registered: set[str] = set()
        self.last_commit_monotonic: float | None = None

    def stop(self) -> None:
        """Ask the loop to finish: no new batches; what was received is committed."""
        self._stopping.set()

    async def run(self) -> None:
        settings = self._settings
        max_delay_s = settings.batch_max_delay_ms / 1000
        stop_waiter = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                receiving = asyncio.ensure_future(
                    self._source.receive(settings.batch_max_messages, max_delay_s)
                )
                await asyncio.wait({receiving, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    break
                await self.process(receiving.result())
        finally:
            stop_waiter.cancel()
        # Drain: everything already handed over gets committed and acknowledged.
        while messages := self._source.take_ready(settings.batch_max_messages):
            await self.process(messages)
        log.info("ingest.stopped")

    async def process(self, messages: list[InboundMessage]) -> None:
        """Validate, write (retrying while the database is away) and acknowledge."""
        if not messages:
            return
        classified = self._classify_all(messages)
        if self._settings.require_registration:
            classified = await self._check_registration(classified)
        await self._write_isolating(classified)
        self._metrics.pending.set(self._source.pending)

    def _classify_all(self, messages: list[InboundMessage]) -> list[Classified]:
        limits = self._limits
        classified: list[Classified] = []
        kinds: collections.Counter[str] = collections.Counter()
        for message in messages:
            outcome = decode_uplink(
                message.topic, message.payload, received_at_ms=message.received_at_ms, limits=limits
            )
            kinds[outcome.topic.kind.value if isinstance(outcome, Accepted) else "invalid"] += 1
            classified.append((message, outcome))
        # Counted per batch: a labelled counter takes a lock, too dear for every message.
        for kind, count in kinds.items():
            self._metrics.received.labels(kind).inc(count)
        return classified

    async def _check_registration(self, classified: list[Classified]) -> list[Classified]:
        vins = {o.topic.vin for _, o in classified if isinstance(o, Accepted)}
        unknown = vins - self._registered
        if unknown:
            # A car registered a moment ago is looked up again rather than refused from cache.
            self._registered |= await self._with_retry(self._sink.registered, sorted(unknown))
        result: list[Classified] = []
        for message, outcome in classified:
            if isinstance(outcome, Accepted) and outcome.topic.vin not in self._registered:
                vin = outcome.topic.vin
                detail = f"vehicle {vin} is not registered: provision it first"
                result.append(
                    (message, Rejected(RejectionReason.UNKNOWN_VEHICLE, detail, message.topic, vin))
                )
            else:
                result.append((message, outcome))
        return result

    def _build(self, classified: list[Classified]) -> IngestBatch:
        batch = IngestBatch(dead_letter_payload_bytes=self._settings.dead_letter_payload_bytes)
        for message, outcome in classified:
            batch.add(message, outcome)
        return batch

    async def _write_isolating(self, classified: list[Classified]) -> None:
        """Write; if the database refuses the content, split until the culprit is alone."""
        batch = self._build(classified)
        try:
            result = await self._with_retry(self._sink.write, batch)
        except BatchRefusedError as exc:
            self._metrics.write_failures.labels("refused").inc()
            if len(classified) == 1:
                message, outcome = classified[0]
                if isinstance(outcome, Rejected):
                    # Even its dead letter was refused: stop rather than loop or drop it.
                    raise
                vin = outcome.topic.vin if isinstance(outcome, Accepted) else outcome.vin
                detail = f"the database refused it: {exc.__cause__ or exc}"
                refused = Rejected(RejectionReason.SCHEMA_VIOLATION, detail, message.topic, vin)
                await self._write_isolating([(message, refused)])
                return
            middle = len(classified) // 2
            await self._write_isolating(classified[:middle])
            await self._write_isolating(classified[middle:])
            return
        self._committed(batch, result)

    def _committed(self, batch: IngestBatch, result: WriteResult) -> None:
        acked = self._source.ack(batch.messages)
        metrics = self._metrics
        now = time.time()
        metrics.batch_size.observe(len(batch))
        metrics.commit_seconds.observe(result.commit_seconds)
        metrics.stored.labels("telemetry").inc(result.telemetry_inserted)
        metrics.stored.labels("events").inc(result.events_inserted)
        metrics.duplicates.inc(result.telemetry_duplicates + result.events_duplicates)
        for letter in batch.dead_letters:
            metrics.dead_letters.labels(letter.reason).inc()
        for device_ms in batch.oldest_device_ms:
            metrics.lag_seconds.observe(max(now - device_ms / 1000, 0.0))
        metrics.last_commit.set(now)
        metrics.database_up.set(1)
        self.last_commit_monotonic = time.monotonic()
        log.debug(
            "ingest.committed",
            messages=len(batch),
            acked=acked,
            telemetry=result.telemetry_inserted,
            duplicates=result.telemetry_duplicates + result.events_duplicates,
            dead_letters=result.dead_letters,
            commit_ms=round(result.commit_seconds * 1000, 1),
        )

    async def _with_retry(self, operation: Callable[[_A], Awaitable[_T]], argument: _A) -> _T:
        """Run a database operation until the database answers, with jittered backoff."""
        delay = self._settings.retry_initial_s
        while True:
            try:
                return await operation(argument)
            except StorageUnavailableError as exc:
                self._metrics.database_up.set(0)
                self._metrics.write_failures.labels("unavailable").inc()
                log.warning("ingest.database_unavailable", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not crypto
                delay = min(delay * 2, self._settings.retry_max_s)
