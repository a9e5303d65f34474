"""Telemetry: one sample, or a batch of samples a car flushes from its backlog."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from schemas.base import BootId, EpochMillis, ProtocolModel, ProtocolVersion, Seq
from schemas.limits import MAX_SAMPLES_PER_MESSAGE
from schemas.signals import Signals
from schemas.vin import Vin

__all__ = ["TelemetryMessage", "TelemetrySample"]


class TelemetrySample(ProtocolModel):
    """Signal values read at one instant."""

    seq: Seq
    ts: EpochMillis
    signals: Signals


class TelemetryMessage(ProtocolModel):
    """What a car publishes on its telemetry topic.

    (vin, boot_id, seq of each sample) is the idempotency key: a sample sent
    twice is stored once.
    """

    v: ProtocolVersion
    vin: Vin
    boot_id: BootId
    samples: tuple[TelemetrySample, ...] = Field(
        min_length=1,
        max_length=MAX_SAMPLES_PER_MESSAGE,
        description="One sample (live data) or a batch (backlog), oldest first.",
    )

    @model_validator(mode="after")
    def _check_unique_seq(self) -> Self:
        if len(self.samples) == 1:  # live data: nothing to compare
            return self
        seqs = {sample.seq for sample in self.samples}
        if len(seqs) != len(self.samples):
            raise ValueError("samples: each sample in a message has its own seq")
        return self
