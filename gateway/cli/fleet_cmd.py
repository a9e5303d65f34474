"""The terminal console: `tgw vehicles`, `tgw vehicle VIN`, `tgw watch`, through the HTTP API.

Like `tgw lock`, they read the gateway's address from --url / TGW_API_URL (else the
TGW_HTTP__HOST/PORT settings) and the token from --token / TGW_API_TOKEN. Exit status: 0 done,
2 the API refused the request or cannot be reached.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["register"]

API_URL_ENV = "TGW_API_URL"
API_TOKEN_ENV = "TGW_API_TOKEN"  # noqa: S105  # the variable's name, not a token
EXIT_REFUSED = 2
NONE = "-"
ALERT_LABELS = {
    "offline": "offline",
    "door_open_parked": "door open (parked)",
    "low_fuel": "low fuel",
    "low_charge": "low charge",
    "low_battery": "12 V low",
}

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help=f"The gateway, e.g. http://127.0.0.1:8080; default: {API_URL_ENV}."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help=f"API token (viewer or more); default: {API_TOKEN_ENV}."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead.")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_REFUSED)


def _client(url: str | None, token: str | None) -> httpx.Client:
    base = url or os.environ.get(API_URL_ENV)
    if not base:
        from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

        http = load_settings().http
        host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host  # noqa: S104  # to reach
        base = f"http://{host}:{http.port}"
    secret = token or os.environ.get(API_TOKEN_ENV)
    if not secret:
        raise _fail(
            f"no API token: set {API_TOKEN_ENV} or pass --token "
            "(an admin creates one with `tgw token create --name NAME --role viewer`)"
        )
    return httpx.Client(
        base_url=base.rstrip("/"),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=httpx.Timeout(10.0),
    )


def _get(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise _fail(f"no gateway answers at {client.base_url} ({exc}): is it running?") from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text[:200]
        raise _fail(f"{detail} (HTTP {response.status_code})")
    return response.json()


# -- formatting ---------------------------------------------------------------------------------


def _ago(value: str | int | None) -> str:
    if value is None:
        return "never"
    if isinstance(value, int):
        moment = datetime.fromtimestamp(value / 1000, UTC)
    else:
        moment = datetime.fromisoformat(value)
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _energy(car: dict[str, Any]) -> str:
    if car.get("fuel") is not None:
        return f"{car['fuel']:.0f} % fuel"
    if car.get("soc") is not None:
        return f"{car['soc']:.0f} % charge"
    return NONE


def _lock(car: dict[str, Any]) -> Text:
    locked = car.get("locked")
    if locked is None:
        return Text(NONE)
    return Text("locked", style="green") if locked else Text("unlocked", style="yellow")


def _online(car: dict[str, Any]) -> Text:
    if car.get("online"):
        return Text("online", style="green")
    return Text("stale" if car.get("connected") else "offline", style="red")


def _alert_kinds(car: dict[str, Any]) -> list[str]:
    return [a if isinstance(a, str) else a["kind"] for a in car.get("alerts") or []]


def _alerts(car: dict[str, Any]) -> Text:
    return Text(", ".join(ALERT_LABELS.get(k, k) for k in _alert_kinds(car)), style="red")


def _speed(car: dict[str, Any]) -> str:
    speed = car.get("speed")
    return NONE if speed is None else f"{speed:.0f} km/h"


def vehicles_table(cars: list[dict[str, Any]], title: str | None = None) -> Table:
    """A table of cars as `tgw vehicles` shows them."""
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    table.add_column("VIN", no_wrap=True, min_width=17)  # never cut: people copy it
    for column in ("model", "state", "lock", "speed", "energy", "last seen", "alerts"):
        table.add_column(column, no_wrap=column != "alerts")
    for car in cars:
        table.add_row(
            car["vin"],
            car.get("model") or "?",
            _online(car),
            _lock(car),
            _speed(car),
            _energy(car),
            _ago(car.get("last_seen_at", car.get("last_seen"))),
            _alerts(car),
        )
    return table


# -- commands -----------------------------------------------------------------------------------


def vehicles(
    *,
    online: Annotated[
        bool | None, typer.Option("--online/--offline", help="Only online (or offline) cars.")
    ] = None,
    locked: Annotated[
        bool | None, typer.Option("--locked/--unlocked", help="Only locked (or unlocked) cars.")
    ] = None,
    fuel_below: Annotated[
        float | None, typer.Option(help="Fuel (or charge) below this %.", min=0, max=100)
    ] = None,
    model: Annotated[str | None, typer.Option(help="Vehicle profile, e.g. bmw_e8x.")] = None,
    alert: Annotated[
        str | None, typer.Option(help=f"Only cars with this alert: {', '.join(ALERT_LABELS)}.")
    ] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Part of the VIN.")] = None,
    bbox: Annotated[
        str | None, typer.Option(help="min_lon,min_lat,max_lon,max_lat (WGS 84).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many cars.")] = 50,
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List cars with their latest state (a table; --json for the API's answer)."""
    params = {
        "online": online,
        "locked": locked,
        "fuel_below": fuel_below,
        "model": model,
        "alert": alert,
        "q": search,
        "bbox": bbox,
    }
    params = {key: value for key, value in params.items() if value is not None}
    cars: list[dict[str, Any]] = []
    total = 0
    with _client(url, token) as client:
        cursor = None
        while len(cars) < limit:
            page_params = params | {"limit": min(limit - len(cars), 1000)}
            if cursor:
                page_params["cursor"] = cursor
            page = _get(client, "/v1/vehicles", page_params)
            cars += page["items"]
            total = page["total"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    if as_json:
        print(json.dumps({"items": cars, "total": total}, indent=2))
        return
    console = Console()
    if not cars:
        console.print("no cars match")
        return
    console.print(vehicles_table(cars))
    more = f" (of {total}: use --limit)" if total > len(cars) else ""
    console.print(f"{len(cars)} cars{more}", style="dim")


def vehicle(
    vin: Annotated[str, typer.Argument(help="The car's VIN.")],
    as_json: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show one car: state, doors, alerts, recent commands and events."""
    with _client(url, token) as client:
        car = _get(client, f"/v1/vehicles/{vin}")
        commands = _get(client, f"/v1/vehicles/{vin}/commands", {"limit": 5})["items"]
        events = _get(client, f"/v1/vehicles/{vin}/events", {"limit": 8})["items"]
    if as_json:
        print(json.dumps({"vehicle": car, "commands": commands, "events": events}, indent=2))
        return
    console = Console()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    doors = [
        name
        for key, name in (
            ("door_fl_open", "front left"),
            ("door_fr_open", "front right"),
            ("door_rl_open", "rear left"),
            ("door_rr_open", "rear right"),
            ("trunk_open", "trunk"),
        )
        if car.get(key)
    ]
    position = NONE if car.get("lat") is None else f"{car['lat']:.5f}, {car['lon']:.5f}"
    rows: list[tuple[str, str | Text]] = [
        ("model", car.get("model") or "?"),
        ("state", _online(car)),
        ("lock", _lock(car)),
        ("doors", Text(", ".join(doors) + " open", style="red") if doors else "all closed"),
        ("ignition", {True: "on", False: "off", None: NONE}[car.get("ignition")]),
        ("speed", _speed(car)),
        ("energy", _energy(car)),
        ("12 V", NONE if car.get("batt_v") is None else f"{car['batt_v']:.1f} V"),
        ("odometer", NONE if car.get("odometer") is None else f"{car['odometer']:.1f} km"),
        ("position", position),
        ("last seen", _ago(car.get("last_seen_at"))),
        ("can do", ", ".join(car.get("capabilities") or []) or NONE),
    ]
    for name, value in rows:
        facts.add_row(name, value)
    parts: list[Any] = [facts]
    parts += [Text(f"! {a['message']}", style="bold red") for a in car.get("alerts") or []]
    console.print(Panel(Group(*parts), title=f"{car['vin']}", title_align="left"))
    if commands:
        table = Table(
            "when", "action", "by", "status", "reason", title="commands", title_justify="left"
        )
        for command in commands:
            status = command["status"]
            style = (
                "green"
                if status in ("executed", "verified")
                else ("red" if status in ("rejected", "failed", "expired", "timed_out") else "cyan")
            )
            table.add_row(
                _ago(command["created_at"]),
                command["action"],
                command["requested_by"],
                Text(status, style=style),
                command.get("reason") or "",
            )
        console.print(table)
    if events:
        table = Table("when", "event", "data", title="events", title_justify="left")
        for event in events:
            table.add_row(_ago(event["time"]), event["type"], json.dumps(event["data"]))
        console.print(table)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class _FleetView:
    """The fleet as `tgw watch` knows it, and how it draws it."""

    def __init__(self) -> None:
        self.fields: list[str] = []
        self.cars: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, float] = {}
        self.connected = False
        self.note = "connecting ..."

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "snapshot":
            self.fields = data["fields"]
            self.cars.clear()
        now = time.monotonic()
        for row in data["rows"]:
            car = dict(zip(self.fields, row, strict=True))
            self.cars[car["vin"]] = car
            self.changed_at[car["vin"]] = now

    def render(self, height: int) -> Group:
        cars = list(self.cars.values())
        online = sum(1 for c in cars if c["online"])
        driving = sum(1 for c in cars if (c.get("speed") or 0) > 1)
        locked = sum(1 for c in cars if c.get("locked"))
        kinds = Counter(kind for c in cars for kind in c.get("alerts") or [])
        header = Text()
        header.append("tgw watch  ", style="bold")
        header.append(f"{len(cars)} cars  ")
        header.append(f"{online} online  ", style="green")
        header.append(f"{driving} driving  ", style="cyan")
        header.append(f"{locked} locked  ")
        for kind, count in kinds.most_common():
            header.append(f"{ALERT_LABELS.get(kind, kind)}: {count}  ", style="red")
        status = Text(
            ("live" if self.connected else self.note) + "  ·  Ctrl-C quits",
            style="green" if self.connected else "yellow",
        )
        rows = max(3, (height - 10) // 2)
        with_alerts = sorted((c for c in cars if c.get("alerts")), key=lambda c: c["vin"])
        recent = sorted(cars, key=lambda c: -self.changed_at.get(c["vin"], 0))
        return Group(
            header,
            status,
            vehicles_table(recent[:rows], title="latest changes"),
            vehicles_table(with_alerts[:rows], title=f"alerts ({len(with_alerts)} cars)"),
        )


def watch(
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """A live view of the fleet: counts, alerts and the latest changes (Ctrl-C quits)."""
    view = _FleetView()
    console = Console()
    delay = 0.5
    with (
        _client(url, token) as client,
        Live(
            view.render(console.height), console=console, screen=False, auto_refresh=False
        ) as live,
    ):
        try:
            while True:
                try:
                    with client.stream(
                        "GET", "/v1/fleet/stream", timeout=httpx.Timeout(30.0, read=45.0)
                    ) as response:
                        if response.status_code in (401, 403):
                            response.read()
                            raise _fail(
                                f"{response.json().get('detail')} (HTTP {response.status_code})"
                            )
                        response.raise_for_status()
                        view.connected, delay = True, 0.5
                        for kind, data in _sse(response.iter_lines()):
                            view.apply(kind, data)
                            live.update(view.render(console.height), refresh=True)
                except httpx.HTTPError as exc:
                    view.note = f"reconnecting ({exc.__class__.__name__}) ..."
                view.connected = False
                live.update(view.render(console.height), refresh=True)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    """Mount `tgw vehicles`, `tgw vehicle` and `tgw watch` on the root command."""
    app.command("vehicles")(vehicles)
    app.command("vehicle")(vehicle)
    app.command("watch")(watch)
