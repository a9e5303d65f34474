"""Fleet insights derived in the database: trips, utilisation, service lists, wear.

- `InsightRefresher`: the gateway task that keeps `trips` and `utilisation_hourly` (and its
  per-model rollup) up to date from the stored telemetry, incrementally and idempotently.
- `InsightStore`: the queries behind the insights API (both storage modes).
- `plan_route`: a short order for a service crew (nearest neighbour, then 2-opt).
- `tgw report makers` builds on `InsightStore.wear_per_car` (gateway.insights.report).

See docs/insights.md.
"""

from gateway.insights.grid import Cell, cell_of, haversine_km
from gateway.insights.models import (
    HourCell,
    Place,
    RefreshResult,
    ServiceItem,
    ServiceList,
    ServiceReason,
    ServiceRoute,
    TrackPoint,
    Trip,
    TripPage,
    Utilisation,
    UtilisationGroup,
    UtilisationGrouping,
    UtilisationSort,
    WearCounts,
    WearGrouping,
    WearReport,
    WearRow,
)
from gateway.insights.refresher import InsightRefresher, RefreshOptions, RefreshReport
from gateway.insights.route import RouteStop, plan_route
from gateway.insights.store import (
    WEAR_KINDS,
    Area,
    AreaError,
    InsightStore,
    ServiceRules,
    TripCursorError,
    combine_wear,
)

__all__ = [
    "WEAR_KINDS",
    "Area",
    "AreaError",
    "Cell",
    "HourCell",
    "InsightRefresher",
    "InsightStore",
    "Place",
    "RefreshOptions",
    "RefreshReport",
    "RefreshResult",
    "RouteStop",
    "ServiceItem",
    "ServiceList",
    "ServiceReason",
    "ServiceRoute",
    "ServiceRules",
    "TrackPoint",
    "Trip",
    "TripCursorError",
    "TripPage",
    "Utilisation",
    "UtilisationGroup",
    "UtilisationGrouping",
    "UtilisationSort",
    "WearCounts",
    "WearGrouping",
    "WearReport",
    "WearRow",
    "cell_of",
    "combine_wear",
    "haversine_km",
    "plan_route",
]
