"""The makers' report: wear and misuse per model, one CSV and one chart per model.

`tgw report makers --from --to --out DIR` (gateway/cli/report_cmd.py) runs `build_makers_report`,
which reads the range a day at a time (so a long range shows progress and never holds a year of
rows at once) and writes, for each model:

- `<model>.csv`: one row per car (trips, km, each count, each count per 1,000 km), then the
  model's total (`vin` = `ALL`). Cars in VIN order; numbers with fixed decimals, so the same data
  always gives the same bytes.
- `<model>.png`: the model's rates per 1,000 km beside the fleet's, and its counts per day.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final

from gateway.errors import GatewayError
from gateway.insights.models import WearCounts, WearRow
from gateway.insights.store import WEAR_KINDS, InsightStore, combine_wear, wear_row

__all__ = ["CSV_COLUMNS", "MakersReport", "ReportError", "build_makers_report", "render_csv"]

CSV_COLUMNS: Final = (
    "vin",
    "model",
    "trips",
    "km",
    *WEAR_KINDS,
    *(f"{kind}_per_1000_km" for kind in WEAR_KINDS),
)
_LABELS: Final = {
    "door_ajar": "door ajar",
    "low_voltage": "12 V low",
    "harsh_braking": "harsh braking",
    "harsh_acceleration": "harsh accel.",
    "signal_out_of_range": "CAN out of range",
    "command_failed": "command failed",
}


class ReportError(GatewayError):
    """The report cannot be written (the output directory, a bad range)."""


@dataclass(slots=True)
class MakersReport:
    """What was written, per model."""

    start: datetime
    end: datetime
    models: dict[str, WearRow] = field(default_factory=dict)
    fleet: WearRow | None = None
    files: list[Path] = field(default_factory=list)


def _add(a: WearRow | None, b: WearRow) -> WearRow:
    if a is None:
        return b
    counts = WearCounts(
        **{kind: getattr(a.counts, kind) + getattr(b.counts, kind) for kind in WEAR_KINDS}
    )
    return wear_row(
        a.key, a.model or b.model, cars=1, trips=a.trips + b.trips, km=a.km + b.km, counts=counts
    )


def render_csv(cars: list[WearRow], total: WearRow) -> str:
    """One model's CSV: a row per car in VIN order, then `ALL`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in [*sorted(cars, key=lambda r: r.key), total]:
        counts = row.counts.model_dump()
        rates = [row.per_1000_km[kind] for kind in WEAR_KINDS]
        writer.writerow(
            [
                "ALL" if row is total else row.key,
                total.model or "",
                row.trips,
                f"{row.km:.3f}",
                *(counts[kind] for kind in WEAR_KINDS),
                *("" if rate is None else f"{rate:.3f}" for rate in rates),
            ]
        )
    return out.getvalue()


def _days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    spans = []
    at = start
    while at < end:
        nxt = min(at + timedelta(days=1), end)
        spans.append((at, nxt))
        at = nxt
    return spans


async def build_makers_report(
    store: InsightStore,
    start: datetime,
    end: datetime,
    out_dir: Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    charts: bool = True,
) -> MakersReport:
    """Read [start, end) a day at a time and write a CSV (and a chart) per model into out_dir.

    Args:
        store: the insight store (wear per car and day).
        start: first instant (inclusive).
        end: last instant (exclusive).
        out_dir: created when missing; existing files of the same names are replaced.
        on_progress: called with (days done, days in all).
        charts: also draw one PNG per model (matplotlib).

    Raises:
        ReportError: an empty range, or the directory cannot be written.
        StorageError: the database cannot answer.
    """
    if end <= start:
        raise ReportError("--to must be later than --from")
    try:
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out_dir}: {exc.strerror}") from exc
    spans = _days(start, end)
    per_car: dict[str, WearRow] = {}
    daily: dict[str, list[tuple[date, WearRow | None]]] = {}
    for index, (day_start, day_end) in enumerate(spans, start=1):
        rows = await store.wear_per_car(day_start, day_end)
        for row in rows:
            per_car[row.key] = _add(per_car.get(row.key), row)
        today = {row.key: row for row in combine_wear(rows, by_model=True)}
        for model in set(daily) | set(today):
            # Every model gets every day (None: nothing that day), so the charts share an axis.
            series = daily.setdefault(model, [(day.date(), None) for day, _ in spans[: index - 1]])
            series.append((day_start.date(), today.get(model)))
        if on_progress is not None:
            on_progress(index, len(spans))
    cars = list(per_car.values())
    report = MakersReport(start=start, end=end)
    totals = {row.key: row for row in combine_wear(cars, by_model=True)}
    fleet = combine_wear(cars, by_model=False)
    report.fleet = fleet[0] if fleet else None
    for model, total in sorted(totals.items()):
        members = [row for row in cars if (row.model or "(unknown)") == model]
        try:
            report.files += await asyncio.to_thread(
                _write_model,
                out_dir / _file_stem(model),
                render_csv(members, total),
                total=total,
                fleet=report.fleet,
                daily=daily.get(model, []) if charts else None,
                span=(start, end),
            )
        except OSError as exc:
            raise ReportError(f"cannot write into {out_dir}: {exc.strerror}") from exc
        report.models[model] = total
    return report


def _write_model(
    stem: Path,
    csv_text: str,
    *,
    total: WearRow,
    fleet: WearRow | None,
    daily: list[tuple[date, WearRow | None]] | None,
    span: tuple[datetime, datetime],
) -> list[Path]:
    csv_path = stem.with_suffix(".csv")
    csv_path.write_text(csv_text, encoding="utf-8")
    if daily is None:
        return [csv_path]
    png_path = stem.with_suffix(".png")
    _chart(png_path, total=total, fleet=fleet, daily=daily, span=span)
    return [csv_path, png_path]


def _file_stem(model: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in model)
    return cleaned or "unknown"


def _chart(
    path: Path,
    *,
    total: WearRow,
    fleet: WearRow | None,
    daily: list[tuple[date, WearRow | None]],
    span: tuple[datetime, datetime],
) -> None:
    start, end = span
    # Imported here: matplotlib takes a while to load and only the report needs it.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = [_LABELS[kind] for kind in WEAR_KINDS]
    figure, (rates, per_day) = plt.subplots(
        2, 1, figsize=(9, 8), gridspec_kw={"height_ratios": [1, 1]}
    )
    positions = range(len(WEAR_KINDS))
    width = 0.4
    model_rates = [total.per_1000_km[kind] or 0.0 for kind in WEAR_KINDS]
    rates.bar([p - width / 2 for p in positions], model_rates, width, label=total.key)
    if fleet is not None:
        fleet_rates = [fleet.per_1000_km[kind] or 0.0 for kind in WEAR_KINDS]
        rates.bar(
            [p + width / 2 for p in positions], fleet_rates, width, label="whole fleet", alpha=0.6
        )
    rates.set_xticks(list(positions), labels, rotation=20, ha="right")
    rates.set_ylabel("per 1,000 km")
    rates.set_title(
        f"{total.key}: {total.cars} cars, {total.trips} trips, {total.km:,.0f} km "
        f"({start:%Y-%m-%d} to {end:%Y-%m-%d})"
    )
    rates.legend()
    days = [f"{day:%m-%d}" for day, _ in daily]
    bottom = [0.0] * len(daily)
    for kind, label in zip(WEAR_KINDS, labels, strict=True):
        values = [0.0 if row is None else float(getattr(row.counts, kind)) for _, row in daily]
        if any(values):
            per_day.bar(days, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if not any(bottom):
        per_day.bar(days, bottom)  # an empty axis with the days on it
    km = per_day.twinx()
    km.plot(days, [0.0 if row is None else row.km for _, row in daily], "k.-", label="km")
    km.set_ylabel("km driven")
    km.set_ylim(bottom=0)
    per_day.set_ylabel("events per day")
    per_day.set_title("per day (UTC days from --from)")
    if len(days) > 16:
        step = (len(days) + 15) // 16
        per_day.set_xticks(range(0, len(days), step), days[::step])
    per_day.tick_params(axis="x", rotation=45)
    handles, names = per_day.get_legend_handles_labels()
    km_handles, km_names = km.get_legend_handles_labels()
    if handles or km_handles:
        per_day.legend(handles + km_handles, names + km_names, fontsize="small", loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
